"""Schemathesis hooks for scripts/api-fuzz.sh (loaded through SCHEMATHESIS_HOOKS)."""
import schemathesis

# A worker's result upload (`PUT /v1/worker/jobs/{id}/result`) is sent as raw bytes like any binary.
schemathesis.serializer.alias("video/mp4", "application/octet-stream")
