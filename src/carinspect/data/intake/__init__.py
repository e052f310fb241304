"""What ingest and split read and write.

Data sources (folders, CSV, COCO, S3, DVC, the demo set, the feedback dataset), the manifest and
splits CSVs, quality statistics, split units and the data reports.
"""
