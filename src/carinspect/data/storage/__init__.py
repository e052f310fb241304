"""Where the images live.

One object layer for a folder or an S3 prefix (the one S3 client factory), the per-file cache or
shards behind splits.csv, and the shard writer.
"""
