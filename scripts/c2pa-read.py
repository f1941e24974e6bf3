#!/usr/bin/env python3
"""Reads a file's C2PA manifest store with c2pa-python (PyPI; the Content Authenticity Initiative's
own library, built independently of the Rust crate sonicgw signs with) and prints one JSON object:
{"validation_state", "validation_status", "active_manifest", "manifests"}, or {"error": ...} when
the reader refuses the file. The independent reader of tests/it/provenance.rs, installed by
scripts/setup.sh into <target>/c2pa-venv. Nothing is fetched from the network."""
import json
import sys

import c2pa


def main() -> int:
    path = sys.argv[1]
    settings = {
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
        "core": {"allowed_network_hosts": []},
    }
    try:
        context = c2pa.Context.from_dict(settings)
        with open(path, "rb") as stream:
            reader = c2pa.Reader("video/mp4", stream, context=context)
            store = json.loads(reader.json())
            store["validation_state"] = reader.get_validation_state()
    except c2pa.C2paError as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        return 0
    print(json.dumps(store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
