"""Bucket operations of the gateway: ListBuckets, ListObjects and ListObjectsV2."""

from __future__ import annotations

import os

from blockkit.gateway import _listing as listing, _s3xml as s3xml
from blockkit.gateway._buckets import Bucket
from blockkit.gateway._errors import S3Error
from blockkit.gateway._etags import EMPTY_MD5, identity
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
        missing = [i for i, (_, st) in enumerate(entries) if st.st_size and cache.get(identity(st)) is None]
        if len(missing) > 1:
            # Hashing releases the GIL: a first listing of many big files uses several cores.
            list(self.state.hash_pool.map(lambda i: self._listed_etag(bucket, *entries[i]), missing))
        return [self._listed_etag(bucket, key, st) for key, st in entries]

    def _listed_etag(self, bucket: Bucket, key: str, st: os.stat_result) -> str:
        """The ETag of a listed file: cached, stored with it (multipart ETags, after a restart), or hashed."""
        cache = self.state.etags
        etag = cache.get(identity(st))
        if etag is not None:
            return etag
        if not st.st_size:
            return EMPTY_MD5
        try:
            obj = bucket.open_object(key)
        except S3Error:
            return ""  # gone (or replaced by a link) since the walk saw it
        with obj:
            # Stored ETags win over re-hashing, so a listing shows the same ETag as HEAD.
            meta = bucket.meta.read(key, obj.fd, obj.st)
            if meta is not None and meta.etag:
                cache.put(identity(obj.st), meta.etag)
                return meta.etag
            return cache.etag_of(obj.fd, obj.st)

    def _list_objects(self, bucket: Bucket, q: dict[str, str], v2: bool) -> None:
        request = listing.parse_list_request(q, v2)
        page = listing.list_page(bucket.walk(request.prefix, request.after), request)
        etags = self._etags(bucket, page.contents)
        objects = [listing.ListedObject(key, st.st_mtime, st.st_size, etag)
                   for (key, st), etag in zip(page.contents, etags)]
        self._send_xml(listing.list_objects_xml(bucket.name, request, page, objects))
