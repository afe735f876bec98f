"""Bucket operations of the gateway: ListBuckets, ListObjects and ListObjectsV2."""

from __future__ import annotations

import os

from blockkit.gateway import _listing as listing, _s3xml as s3xml
from blockkit.gateway._buckets import Bucket
from blockkit.gateway._etags import identity
from blockkit.gateway._exchange import Exchange
from blockkit.gateway._listing import OWNER
from blockkit.gateway._s3xml import el


class BucketOps(Exchange):
    """ListBuckets and ListObjects(V2): the listing pages come from `gateway.listing`."""

    def _list_buckets(self) -> None:
        items = []
        for name, bucket in sorted(self.state.buckets.items()):
            try:
                created = bucket.root.stat().st_mtime
            except OSError:
                created = 0.0
            items.append(el("Name", name) + el("CreationDate", s3xml.iso8601(created)))
        body = s3xml.document(
            "ListAllMyBucketsResult",
            [OWNER, "<Buckets>", *(f"<Bucket>{i}</Bucket>" for i in items), "</Buckets>"],
        )
        self._send_xml(body)

    def _etags(self, bucket: Bucket, entries: list[tuple[str, os.stat_result]]) -> list[str]:
        cache = self.state.etags
        paths = [bucket.root / k for k, _ in entries]
        for (key, st), path in zip(entries, paths):
            # ETags stored with the object (multipart ETags, after a restart) win over re-hashing,
            # so a listing shows the same ETag as HEAD.
            if st.st_size and cache.get(identity(st)) is None:
                meta = bucket.meta.read(key, path, st)
                if meta is not None and meta.etag:
                    cache.put(identity(st), meta.etag)
        missing = [i for i, (_, st) in enumerate(entries) if cache.get(identity(st)) is None and st.st_size]
        if len(missing) > 1:
            # Hashing releases the GIL: a first listing of many big files uses several cores.
            list(self.state.hash_pool.map(lambda i: cache.etag_of(paths[i], entries[i][1]), missing))
        return [cache.etag_of(p, st) for p, (_, st) in zip(paths, entries)]

    def _list_objects(self, bucket: Bucket, q: dict[str, str], v2: bool) -> None:
        request = listing.parse_list_request(q, v2)
        page = listing.list_page(bucket.walk(request.prefix, request.after), request)
        etags = self._etags(bucket, page.contents)
        objects = [listing.ListedObject(key, st.st_mtime, st.st_size, etag)
                   for (key, st), etag in zip(page.contents, etags)]
        self._send_xml(listing.list_objects_xml(bucket.name, request, page, objects))
