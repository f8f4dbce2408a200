"""The update repository: takes builds' update payloads, gives signed TUF static files.

`keys` (signing keys, offline and online), `settings` (expiry periods), `files` (atomic, ordered
writes), `repository` (TUF metadata: init, sign, refresh, rotate; `root_metadata` for images),
`channel` (the channel manifest and its rules), `images` (`repo add`), `status`, `publish` (to
a directory or S3). Nodes read it with python-tuf's ngclient.
"""
