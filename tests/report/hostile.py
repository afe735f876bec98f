"""A block that leaves hostile strings and links in its run folder, for the report's escaping tests."""

from __future__ import annotations

from pathlib import Path

from tests.runner.blocks import make_blocks, write_block

EVIL_ID = '<script>alert("id")</script>'
EVIL_PROP = "</script><img src=x onerror=alert('prop')>"
EVIL_LOG = '<img src=x onerror=alert("log")></script><script>alert("log2")</script>'

SOURCE = '''
import base64, os
import blockkit
from blockkit import FeatureCollection

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

@blockkit.data_block
def evil(query, ctx):
    print(%(log)r, flush=True)
    out = []
    for i in range(3):
        rel = "f%%d.txt" %% i
        ctx.output_path(rel).write_text("x")
        x = 13 + i * 0.01
        ring = [[x, 52.0], [x + 0.008, 52.0], [x + 0.008, 52.008], [x, 52.008], [x, 52.0]]
        out.append(ctx.new_feature(
            geometry={"type": "Polygon", "coordinates": [ring]}, data_path=rel,
            properties={"note": %(prop)r, "<b>key</b>": "v"}, id=%(fid)r if i == 0 else "f%%d" %% i))
    ctx.quicklook_dir.mkdir(parents=True, exist_ok=True)
    (ctx.quicklook_dir / "f1.png").write_bytes(PNG)
    os.symlink("/etc/hostname", ctx.quicklook_dir / "f2.png")  # a link posing as a quicklook
    return FeatureCollection(out)

if __name__ == "__main__":
    evil.run()
''' % {"log": EVIL_LOG, "prop": EVIL_PROP, "fid": EVIL_ID}


def hostile_workflow(root: Path, *, fail: bool) -> Path:
    """evil -> upper; `upper` crashes when fail=True (a failed run with a highlighted error line)."""
    evil = write_block(root / "blocks", "evil", kind="data", source=SOURCE, params={})
    upper = make_blocks(root / "blocks")["upper"]
    wf = root / "hostile.yaml"
    wf.write_text(
        "name: hostile\nsteps:\n"
        f"  evil: {{block: {evil}}}\n"
        f"  up: {{block: {upper}, params: {{behaviour: {'crash' if fail else 'ok'}}}}}\n"
    )
    return wf
