"""YAML files as JSON for tests/deploy.rs: {path: [document, ...]} on stdout.

Run with the Python that scripts/test prepares (CHURNWATCH_TEST_PYTHON); PyYAML comes
with yamllint and kubernetes-validate there. Empty documents are left out.
"""

import json
import sys

import yaml

out = {}
for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        out[path] = [doc for doc in yaml.safe_load_all(f) if doc is not None]
json.dump(out, sys.stdout, ensure_ascii=False)
