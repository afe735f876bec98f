"""The report page's style and script, inlined into every report.html (no external file, no request).

The script reads the JSON data element and builds the page with DOM calls and `textContent`
only (run folder strings are untrusted). Maps are drawn on a canvas in an equirectangular
projection scaled by cos(latitude) around the view's centre, with graticule, scale bar and
coordinates on hover; tables are paginated, so 1,000 features and 50 steps stay responsive.
"""

from __future__ import annotations

STYLE = """
:root{--ok:#2e7d32;--failed:#c62828;--cached:#00838f;--running:#ef6c00;--pending:#9e9e9e;--skipped:#6a1b9a;
--bg:#fafafa;--fg:#212121;--muted:#616161;--line:#e0e0e0}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:var(--bg);color:var(--fg)}
main{max-width:1280px;margin:0 auto;padding:16px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 8px}h3{font-size:14px;margin:14px 0 6px}
.meta{color:var(--muted);display:flex;flex-wrap:wrap;gap:4px 16px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.s-ok{background:var(--ok)}.s-failed{background:var(--failed)}.s-cached{background:var(--cached)}
.s-running{background:var(--running)}.s-pending{background:var(--pending)}.s-skipped{background:var(--skipped)}
.s-interrupted{background:var(--running)}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:12px;margin:12px 0}
.scroll{overflow:auto}
svg.graph text{font-size:12px;fill:#fff;pointer-events:none}
svg.graph g.node{cursor:pointer}svg.graph g.node.sel rect{stroke:#000;stroke-width:3}
svg.graph path{fill:none;stroke:#90a4ae;stroke-width:1.5}
.tl-row{display:grid;grid-template-columns:160px 1fr 150px;gap:8px;align-items:center;cursor:pointer;padding:1px 0}
.tl-row:hover{background:#f0f0f0}.tl-row.sel{background:#e3f2fd}
.tl-name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.tl-track{position:relative;height:14px;background:#f5f5f5;border-radius:3px}
.tl-bar{position:absolute;top:0;bottom:0;border-radius:3px;min-width:2px}
.tl-info{color:var(--muted);font-size:12px;white-space:nowrap}
.tabs{display:flex;flex-wrap:wrap;gap:4px}
.tabs button{border:1px solid var(--line);background:#fff;border-radius:4px;padding:2px 8px;cursor:pointer;font:inherit}
.tabs button.sel{border-color:#1565c0;background:#e3f2fd}
.mapwrap{position:relative}
canvas.map{width:100%;height:440px;display:block;background:#eef3f7;border:1px solid var(--line);border-radius:4px;cursor:crosshair}
.readout{position:absolute;right:6px;top:6px;background:rgba(255,255,255,.9);padding:2px 6px;border-radius:3px;font:12px monospace;max-width:60%;overflow:hidden;white-space:nowrap;text-overflow:ellipsis}
.legend{color:var(--muted);font-size:12px;margin-top:4px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:3px 6px;text-align:left;vertical-align:top;max-width:360px;overflow-wrap:anywhere}
th{background:#f5f5f5;position:sticky;top:0}
tr.hl{background:#fff8e1}
.pager{display:flex;gap:8px;align-items:center;margin:6px 0}
.pager button{font:inherit}
.pager input{font:inherit;padding:2px 4px}
pre.log{background:#263238;color:#eceff1;padding:8px;border-radius:4px;overflow:auto;max-height:360px;margin:0;font:12px/1.35 monospace}
pre.log span{display:block;white-space:pre-wrap;overflow-wrap:anywhere}
pre.log span.err{background:#b71c1c;color:#fff;font-weight:700}
.error{border-left:4px solid var(--failed);background:#ffebee;padding:6px 10px;margin:8px 0;font-family:monospace;white-space:pre-wrap;overflow-wrap:anywhere}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
.gallery figure{margin:0;width:150px}.gallery img{width:150px;height:150px;object-fit:contain;background:#eee;border:1px solid var(--line)}
.gallery figcaption{font-size:11px;color:var(--muted);overflow-wrap:anywhere}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;overflow-wrap:anywhere;font-family:monospace}
.note{color:#8d6e63}
"""

SCRIPT = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var RUN = DATA.run, STEPS = DATA.steps, PAGE = 50;
  var app = document.getElementById("app");
  var selected = null, mapState = null;

  function el(tag, attrs, kids) {
    var node = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "cls") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (kid) { if (kid != null) node.appendChild(typeof kid === "string" ? document.createTextNode(kid) : kid); });
    return node;
  }
  function svg(tag, attrs) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function badge(status) { return el("span", {cls: "badge s-" + String(status).replace(/[^a-z]/g, ""), text: status}); }
  function when(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "-"; }
  function secs(s) {
    if (s == null) return "-";
    if (s < 60) return s.toFixed(1) + " s";
    var m = Math.floor(s / 60); return m + " min " + Math.round(s - 60 * m) + " s";
  }
  function short(s, n) { s = String(s || ""); return s.length > n ? s.slice(0, n - 1) + "\u2026" : s; }
  function kv(pairs) {
    var dl = el("dl", {cls: "kv"});
    pairs.forEach(function (p) { if (p[1] !== "" && p[1] != null) { dl.appendChild(el("dt", {text: p[0]})); dl.appendChild(el("dd", {text: String(p[1])})); } });
    return dl;
  }
  var COLORS = {ok: "#2e7d32", failed: "#c62828", cached: "#00838f", running: "#ef6c00", pending: "#9e9e9e", skipped: "#6a1b9a"};

  // --- header ---------------------------------------------------------------------------------
  function header() {
    var end = RUN.ended || RUN.updated;
    var box = el("header", null, [
      el("h1", null, ["Run ", el("span", {id: "run-id", text: RUN.run_id}), " ", badge(RUN.status)]),
      el("div", {cls: "meta"}, [
        el("span", {text: "workflow " + RUN.workflow}), el("span", {text: "engine " + RUN.engine}),
        el("span", {text: "started " + when(RUN.started)}),
        el("span", {text: "duration " + (RUN.started && end ? secs(end - RUN.started) : "-")}),
        el("span", {text: STEPS.length + " step(s)"}),
        el("span", {text: "blockkit " + (RUN.blockkit_version || "?")})
      ]),
      el("div", {cls: "meta"}, [el("span", {text: "folder " + RUN.folder}),
        RUN.workflow_sha256 ? el("span", {text: "workflow sha256 " + short(RUN.workflow_sha256, 16)}) : null,
        el("span", {text: "report written " + when(RUN.generated)})])
    ]);
    if (RUN.status === "running") box.appendChild(el("p", {cls: "note", text: "The run was still running when this report was written; `blockkit runs report " + RUN.run_id + "` writes a newer one."}));
    DATA.notes.forEach(function (n) { box.appendChild(el("p", {cls: "note", text: n})); });
    return box;
  }

  // --- workflow graph (inline SVG) -----------------------------------------------------------
  function graph() {
    var index = {}, depth = {}, rows = {}, W = 150, H = 32, DX = 190, DY = 46;
    STEPS.forEach(function (s, i) { index[s.name] = i; });
    STEPS.forEach(function (s) {
      var d = 0;
      s.upstream.forEach(function (u) { if (u in depth) d = Math.max(d, depth[u] + 1); });
      depth[s.name] = d;
    });
    var pos = {}, maxRow = 0, maxDepth = 0;
    STEPS.forEach(function (s) {
      var d = depth[s.name], r = rows[d] || 0; rows[d] = r + 1;
      pos[s.name] = [10 + d * DX, 10 + r * DY]; maxRow = Math.max(maxRow, r); maxDepth = Math.max(maxDepth, d);
    });
    var root = svg("svg", {"class": "graph", width: 20 + maxDepth * DX + W, height: 20 + maxRow * DY + H, role: "img"});
    root.appendChild(svg("title")).textContent = "workflow graph of " + RUN.workflow;
    STEPS.forEach(function (s) {
      s.upstream.forEach(function (u) {
        if (!(u in pos)) return;
        var a = pos[u], b = pos[s.name], x1 = a[0] + W, y1 = a[1] + H / 2, x2 = b[0], y2 = b[1] + H / 2;
        root.appendChild(svg("path", {d: "M" + x1 + "," + y1 + " C" + (x1 + 30) + "," + y1 + " " + (x2 - 30) + "," + y2 + " " + x2 + "," + y2}));
      });
    });
    STEPS.forEach(function (s) {
      var p = pos[s.name], g = svg("g", {"class": "node", "data-step": s.name, transform: "translate(" + p[0] + "," + p[1] + ")"});
      g.appendChild(svg("rect", {width: W, height: H, rx: 5, fill: COLORS[s.status] || "#607d8b"}));
      var t = svg("text", {x: 8, y: 20}); t.textContent = short(s.name, 14) + " \u00b7 " + s.status; g.appendChild(t);
      g.appendChild(svg("title")).textContent = s.name + ": " + s.status + (s.exit_name ? " (" + s.exit_name + ")" : "");
      g.addEventListener("click", function () { select(s.name); });
      root.appendChild(g);
    });
    return el("section", {cls: "card"}, [el("h2", {text: "Workflow"}), el("div", {cls: "scroll", id: "graph"}, [root])]);
  }

  // --- timeline ------------------------------------------------------------------------------
  function timeline() {
    var t0 = RUN.started || Infinity, t1 = 0, now = RUN.ended || RUN.updated || RUN.generated;
    STEPS.forEach(function (s) { if (s.started) { t0 = Math.min(t0, s.started); t1 = Math.max(t1, s.ended || now); } });
    if (!isFinite(t0)) t0 = 0;
    var span = Math.max(t1 - t0, 0.001), box = el("div", {id: "timeline"});
    STEPS.forEach(function (s) {
      var track = el("div", {cls: "tl-track"}), info;
      if (s.started) {
        var end = s.ended || now, bar = el("div", {cls: "tl-bar s-" + s.status});
        bar.style.left = (100 * (s.started - t0) / span) + "%";
        bar.style.width = (100 * Math.max(end - s.started, 0) / span) + "%";
        track.appendChild(bar);
      }
      if (s.status === "cached") info = "reused" + (s.cached_from ? " from " + s.cached_from.split("/")[0] : "");
      else if (s.started) info = "+" + secs(s.started - t0) + ", " + secs((s.ended || now) - s.started) + (s.status === "running" ? " so far" : "");
      else info = s.status;
      var row = el("div", {cls: "tl-row", "data-step": s.name}, [el("span", {cls: "tl-name", title: s.name, text: s.name}), track, el("span", {cls: "tl-info", title: info, text: info})]);
      row.addEventListener("click", function () { select(s.name); });
      box.appendChild(row);
    });
    return el("section", {cls: "card"}, [el("h2", {text: "Timeline"}), box]);
  }

  // --- map (canvas) ----------------------------------------------------------------------------
  function niceStep(span, target) {
    var raw = span / target, p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return p * (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10);
  }
  function layerBounds(step) {
    var b = [Infinity, Infinity, -Infinity, -Infinity];
    function add(box) { if (!box) return; b[0] = Math.min(b[0], box[0]); b[1] = Math.min(b[1], box[1]); b[2] = Math.max(b[2], box[2]); b[3] = Math.max(b[3], box[3]); }
    step.features.forEach(function (f) { add(f.bbox); });
    step.quicklooks.forEach(function (q) { add(q.bbox); });
    step.vectors.forEach(function (r) { for (var i = 0; i < r.length; i += 2) add([r[i], r[i + 1], r[i], r[i + 1]]); });
    return isFinite(b[0]) ? b : null;
  }
  function makeMap(step, images) {
    var canvas = el("canvas", {cls: "map", id: "map", "data-step": step.name});
    var readout = el("div", {cls: "readout", text: "move over the map for coordinates"});
    var bounds = layerBounds(step), footprints = step.features.filter(function (f) { return f.rings.length; }).length;
    canvas.setAttribute("data-footprints", "0");
    if (!bounds) canvas.style.height = "40px";
    var st = {step: step, canvas: canvas, images: images, bounds: bounds, highlight: null, view: null};
    if (bounds) {
      var cx = (bounds[0] + bounds[2]) / 2, cy = (bounds[1] + bounds[3]) / 2;
      var w = Math.max(bounds[2] - bounds[0], 1e-6), h = Math.max(bounds[3] - bounds[1], 1e-6);
      st.view = {cx: cx, cy: cy, k: Math.cos(cy * Math.PI / 180), w: w * 1.1, h: h * 1.1, scale: null};
    }
    function project(lon, lat) { var v = st.view; return [st.ox + (lon - v.cx) * v.k * v.scale, st.oy - (lat - v.cy) * v.scale]; }
    function unproject(x, y) { var v = st.view; return [v.cx + (x - st.ox) / (v.k * v.scale), v.cy - (y - st.oy) / v.scale]; }
    function draw() {
      var dpr = window.devicePixelRatio || 1, W = canvas.clientWidth || 800, H = canvas.clientHeight || 440;
      canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
      var ctx = canvas.getContext("2d"); ctx.setTransform(dpr, 0, 0, dpr, 0, 0); ctx.clearRect(0, 0, W, H);
      if (!st.view) { ctx.fillStyle = "#616161"; ctx.font = "13px sans-serif"; ctx.fillText("no output feature of this step has a geometry", 12, 24); return; }
      var v = st.view; if (v.scale == null) v.scale = Math.min(W / (v.w * v.k), H / v.h);
      st.ox = W / 2; st.oy = H / 2;
      var nw = unproject(0, 0), se = unproject(W, H);
      // graticule
      var g = niceStep(se[0] - nw[0], 5), gy = niceStep(nw[1] - se[1], 5);
      var dec = Math.max(0, -Math.floor(Math.log10(Math.min(g, gy))));
      ctx.strokeStyle = "rgba(0,0,0,0.12)"; ctx.fillStyle = "#546e7a"; ctx.lineWidth = 1; ctx.font = "11px sans-serif";
      for (var lon = Math.ceil(nw[0] / g) * g; lon <= se[0]; lon += g) { var p = project(lon, 0); ctx.beginPath(); ctx.moveTo(p[0], 0); ctx.lineTo(p[0], H); ctx.stroke(); ctx.fillText(lon.toFixed(dec) + "\u00b0", p[0] + 2, H - 4); }
      for (var lat = Math.ceil(se[1] / gy) * gy; lat <= nw[1]; lat += gy) { var q = project(0, lat); ctx.beginPath(); ctx.moveTo(0, q[1]); ctx.lineTo(W, q[1]); ctx.stroke(); ctx.fillText(lat.toFixed(dec) + "\u00b0", 2, q[1] - 2); }
      // quicklooks at their bounds
      var placed = 0;
      st.step.quicklooks.forEach(function (ql, i) {
        var img = st.images[i]; if (!ql.bbox || !img || !img.complete || !img.naturalWidth) return;
        var a = project(ql.bbox[0], ql.bbox[3]), b = project(ql.bbox[2], ql.bbox[1]);
        ctx.globalAlpha = 0.9; ctx.drawImage(img, a[0], a[1], Math.max(b[0] - a[0], 1), Math.max(b[1] - a[1], 1)); ctx.globalAlpha = 1; placed++;
      });
      canvas.setAttribute("data-quicklooks-placed", String(placed));
      // vector outputs
      ctx.fillStyle = "rgba(255,193,7,0.35)"; ctx.strokeStyle = "#ff8f00"; ctx.lineWidth = 1;
      st.step.vectors.forEach(function (r) { path(ctx, r); if (r.length > 4) ctx.fill(); ctx.stroke(); });
      canvas.setAttribute("data-vectors", String(st.step.vectors.length));
      // footprints
      var drawn = 0;
      st.step.features.forEach(function (f) {
        if (!f.rings.length) return;
        var hl = f.id === st.highlight;
        ctx.strokeStyle = hl ? "#d50000" : "#1565c0"; ctx.lineWidth = hl ? 3 : 1.5;
        f.rings.forEach(function (r) { path(ctx, r); ctx.stroke(); });
        drawn++;
      });
      canvas.setAttribute("data-footprints", String(drawn));
      // scale bar (metres along the centre latitude)
      var mpp = 111320 / v.scale, len = niceStep(mpp * W / 6, 1), px = len / mpp;
      var label = len >= 1000 ? (len / 1000) + " km" : len + " m", x0 = W - 16 - px;
      ctx.fillStyle = "rgba(255,255,255,0.85)"; ctx.fillRect(x0 - 6, H - 44, px + 12, 26);
      ctx.fillStyle = "#000"; ctx.fillRect(x0, H - 24, px, 3); ctx.fillText(label, x0, H - 29);
    }
    function path(ctx, r) {
      ctx.beginPath();
      if (r.length === 2) { var c = project(r[0], r[1]); ctx.arc(c[0], c[1], 3, 0, 2 * Math.PI); return; }
      for (var i = 0; i < r.length; i += 2) { var p = project(r[i], r[i + 1]); if (i) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]); }
    }
    if (st.view) {
      var drag = null;
      canvas.addEventListener("mousemove", function (e) {
        var r = canvas.getBoundingClientRect(), x = e.clientX - r.left, y = e.clientY - r.top;
        if (drag) { st.view.cx -= (x - drag[0]) / (st.view.k * st.view.scale); st.view.cy += (y - drag[1]) / st.view.scale; drag = [x, y]; draw(); }
        var ll = unproject(x, y), hits = [];
        st.step.features.forEach(function (f) { if (f.bbox && hits.length < 3 && ll[0] >= f.bbox[0] && ll[0] <= f.bbox[2] && ll[1] >= f.bbox[1] && ll[1] <= f.bbox[3]) hits.push(f.id); });
        readout.textContent = ll[1].toFixed(5) + "\u00b0, " + ll[0].toFixed(5) + "\u00b0" + (hits.length ? "  " + hits.join(", ") : "");
      });
      canvas.addEventListener("mousedown", function (e) { var r = canvas.getBoundingClientRect(); drag = [e.clientX - r.left, e.clientY - r.top]; });
      window.addEventListener("mouseup", function () { drag = null; });
      canvas.addEventListener("wheel", function (e) { e.preventDefault(); st.view.scale *= e.deltaY < 0 ? 1.25 : 0.8; draw(); }, {passive: false});
    }
    st.draw = draw;
    var legend = el("div", {cls: "legend", text: footprints + " footprint(s) (blue)" + (step.footprints_cut ? ", " + step.footprints_cut + " cut to fit" : "") + ", " + step.vectors.length + " vector ring(s) from output files (orange)" + (step.vectors_cut ? ", cut to fit" : "") + ", " + step.quicklooks.filter(function (q) { return q.bbox; }).length + " quicklook(s) at their feature's bounds. Drag to pan, wheel to zoom."});
    return {node: el("div", null, [el("div", {cls: "mapwrap"}, [canvas, readout]), legend]), state: st};
  }

  // --- paginated table ---------------------------------------------------------------------------
  function pagedTable(id, columns, rows, rowKey, onRow) {
    var page = 0, filter = "", box = el("div", {id: id}), table = el("table"), info = el("span");
    var input = el("input", {type: "search", placeholder: "filter", "aria-label": "filter rows"});
    var prev = el("button", {text: "\u2039 prev"}), next = el("button", {text: "next \u203a"});
    function shown() { return filter ? rows.filter(function (r) { return r.join("\u0000").toLowerCase().indexOf(filter) >= 0; }) : rows; }
    function render() {
      var list = shown(), pages = Math.max(1, Math.ceil(list.length / PAGE)); page = Math.min(page, pages - 1);
      clear(table);
      table.appendChild(el("thead", null, [el("tr", null, columns.map(function (c) { return el("th", {text: c}); }))]));
      var body = el("tbody");
      list.slice(page * PAGE, page * PAGE + PAGE).forEach(function (r) {
        var tr = el("tr", null, r.map(function (c) { return el("td", {text: c}); }));
        if (onRow) tr.addEventListener("mouseenter", function () { onRow(r[rowKey]); });
        body.appendChild(tr);
      });
      table.appendChild(body);
      info.textContent = list.length ? "rows " + (page * PAGE + 1) + "\u2013" + Math.min(list.length, page * PAGE + PAGE) + " of " + list.length : "no rows";
      prev.disabled = page === 0; next.disabled = page >= pages - 1;
    }
    prev.addEventListener("click", function () { page--; render(); });
    next.addEventListener("click", function () { page++; render(); });
    input.addEventListener("input", function () { filter = input.value.toLowerCase(); page = 0; render(); });
    render();
    box.appendChild(el("div", {cls: "pager"}, [input, prev, next, info]));
    box.appendChild(el("div", {cls: "scroll"}, [table]));
    return box;
  }

  // --- one step ------------------------------------------------------------------------------
  function stepDetail(s) {
    var box = el("section", {cls: "card", id: "step"});
    box.appendChild(el("h2", null, ["Step ", el("span", {id: "step-name", text: s.name}), " ", badge(s.status)]));
    if (s.detail && s.status === "failed") box.appendChild(el("div", {cls: "error", id: "step-error", text: s.detail}));
    if (s.progress) box.appendChild(el("p", {text: "progress " + s.progress[0] + "/" + s.progress[1]}));
    box.appendChild(kv([
      ["exit", s.exit_code == null ? "" : s.exit_code + " (" + s.exit_name + ")"],
      ["started", s.started ? when(s.started) : ""], ["duration", s.started && s.ended ? secs(s.ended - s.started) : ""],
      ["reused from", s.cached_from], ["block", [s.block.name, s.block.version].filter(Boolean).join(" ")],
      ["block folder", s.block.path], ["block sha256", s.block.source_sha256], ["engine", s.engine], ["image", s.image],
      ["image id", s.image_id], ["cache key", s.cache_key], ["upstream", s.upstream.join(", ")],
      ["features out", s.features_out == null ? "" : s.features_out],
      ["per feature", s.status === "failed" ? "" : s.detail]  // a scattered step: which features ran, which were reused
    ]));
    var params = Object.keys(s.params);
    box.appendChild(el("h3", {text: "Parameters"}));
    box.appendChild(params.length ? pagedTable("params", ["name", "value"], params.map(function (k) { return [k, s.params[k]]; })) : el("p", {text: "none given (block defaults)"}));
    box.appendChild(el("h3", {text: "Map"}));
    var images = s.quicklooks.map(function (q) { return el("img", {src: q.src, alt: "quicklook " + q.name, loading: "eager", decoding: "async"}); });
    var map = makeMap(s, images);
    mapState = map.state;
    box.appendChild(map.node);
    var pending = false;  // one redraw per frame however many quicklooks arrive in it
    images.forEach(function (img) { img.addEventListener("load", function () {
      if (pending) return; pending = true;
      requestAnimationFrame(function () { pending = false; if (mapState === map.state) map.state.draw(); });
    }); });
    if (s.quicklooks.length) {
      box.appendChild(el("h3", {text: "Quicklooks (" + s.quicklooks.length + ")"}));
      box.appendChild(el("div", {cls: "gallery", id: "quicklooks"}, s.quicklooks.map(function (q, i) { return el("figure", null, [images[i], el("figcaption", {text: q.name})]); })));
    }
    var keys = {};
    s.features.forEach(function (f) { Object.keys(f.props).forEach(function (k) { keys[k] = (keys[k] || 0) + 1; }); });
    var cols = Object.keys(keys).sort(function (a, b) { return keys[b] - keys[a]; }).slice(0, 6);
    box.appendChild(el("h3", {text: "Features (" + s.features_total + ")" + (s.features.length < s.features_total ? ", first " + s.features.length + " shown" : "")}));
    if (s.features_problem) box.appendChild(el("p", {cls: "note", text: s.features_problem}));
    box.appendChild(pagedTable("features", ["id", "data_path"].concat(cols), s.features.map(function (f) {
      return [f.id, f.data_path].concat(cols.map(function (k) { return k in f.props ? f.props[k] : ""; }));
    }), 0, function (fid) { map.state.highlight = fid; map.state.draw(); }));
    box.appendChild(el("h3", {text: "Output files and sha256 (" + s.outputs_total + ")"}));
    box.appendChild(pagedTable("outputs", ["file", "sha256"], s.outputs));
    box.appendChild(el("h3", {text: "Last log lines" + (s.log_cut ? " (earlier lines in logs/" + s.name + ".log)" : "")}));
    var log = el("pre", {cls: "log", id: "log"});
    s.log.forEach(function (line, i) { log.appendChild(el("span", {cls: i === s.error_line ? "err" : "", text: line})); });
    if (!s.log.length) log.appendChild(el("span", {text: s.status === "cached" ? "(reused: the log is in the run that produced it)" : "(no log)"}));
    box.appendChild(log);
    return box;
  }

  // --- selection -------------------------------------------------------------------------------
  var tabs, detailSlot;
  function details(step) {
    if (!step.features) {
      var heavy = JSON.parse(document.getElementById("step-data-" + STEPS.indexOf(step)).textContent);
      for (var k in heavy) step[k] = heavy[k];
    }
    return step;
  }
  function select(name) {
    var step = STEPS.filter(function (s) { return s.name === name; })[0];
    if (!step) return;
    details(step);
    selected = name;
    if (overviewButton) overviewButton.classList.remove("sel");
    Array.prototype.forEach.call(document.querySelectorAll("[data-step]"), function (n) {
      var on = n.getAttribute("data-step") === name && !n.classList.contains("map");
      if (n.tagName.toLowerCase() === "g") n.setAttribute("class", "node" + (on ? " sel" : "")); else n.classList.toggle("sel", on);
    });
    clear(detailSlot);
    detailSlot.appendChild(stepDetail(step));
    mapState.draw();
    app.setAttribute("data-selected", name);
  }

  function overview() {
    STEPS.forEach(details);
    selected = null;
    Array.prototype.forEach.call(document.querySelectorAll("[data-step]"), function (n) {
      if (n.tagName.toLowerCase() === "g") n.setAttribute("class", "node"); else n.classList.remove("sel");
    });
    overviewButton.classList.add("sel");
    var shown = {}, all = [];
    STEPS.forEach(function (s) {
      shown[s.name] = s.features_total > 0 || s.quicklooks.length > 0;
      s.quicklooks.forEach(function (q) { all.push({step: s.name, q: q, img: el("img", {src: q.src, alt: "quicklook " + q.name})}); });
    });
    function combined() {
      var feats = [], qls = [], imgs = [], vec = [];
      STEPS.forEach(function (s) { if (shown[s.name]) { feats = feats.concat(s.features); vec = vec.concat(s.vectors); } });
      all.forEach(function (a) { if (shown[a.step]) { qls.push(a.q); imgs.push(a.img); } });
      return {step: {name: "all steps", features: feats, quicklooks: qls, vectors: vec, vectors_cut: false}, images: imgs};
    }
    var first = combined(), map = makeMap(first.step, first.images);
    mapState = map.state;
    var layers = el("div", {cls: "tabs", id: "layers"}, STEPS.map(function (s) {
      var box = el("input", {type: "checkbox", "data-layer": s.name});
      box.checked = shown[s.name];
      box.addEventListener("change", function () {
        shown[s.name] = box.checked;
        var c = combined(); map.state.step = c.step; map.state.images = c.images; map.state.draw();
      });
      return el("label", null, [box, " " + s.name]);
    }));
    var pending = false;
    all.forEach(function (a) { a.img.addEventListener("load", function () {
      if (pending) return; pending = true;
      requestAnimationFrame(function () { pending = false; if (mapState === map.state) map.state.draw(); });
    }); });
    clear(detailSlot);
    detailSlot.appendChild(el("section", {cls: "card", id: "overview"}, [
      el("h2", {text: "All steps on one map"}),
      el("p", {cls: "legend", text: "Layers, drawn in step order (later steps on top):"}), layers, map.node]));
    map.state.draw();
    app.setAttribute("data-selected", "");
  }

  var overviewButton;
  function build() {
    app.appendChild(header());
    if (!STEPS.length) { app.appendChild(el("p", {text: "This run has no steps."})); return; }
    app.appendChild(graph());
    app.appendChild(timeline());
    overviewButton = el("button", {id: "tab-overview", text: "all steps on one map"});
    overviewButton.addEventListener("click", overview);
    tabs = el("nav", {cls: "tabs card", id: "tabs"}, [overviewButton].concat(STEPS.map(function (s) {
      var b = el("button", {"data-step": s.name, text: s.name}); b.addEventListener("click", function () { select(s.name); }); return b;
    })));
    app.appendChild(tabs);
    detailSlot = el("div");
    app.appendChild(detailSlot);
    var failed = STEPS.filter(function (s) { return s.status === "failed"; })[0];
    var done = STEPS.filter(function (s) { return s.features_total; });
    select((failed || done[done.length - 1] || STEPS[STEPS.length - 1]).name);
    window.addEventListener("resize", function () { if (mapState) mapState.draw(); });
  }

  window.blockkitReport = {select: select, overview: overview, steps: function () { return STEPS.map(function (s) { return s.name; }); }};
  build();
  app.setAttribute("data-ready", "1");
})();
"""
