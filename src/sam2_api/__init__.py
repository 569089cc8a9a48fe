"""SAM 2 segmentation as a service: image + click/box in, PNG mask on S3 out."""
