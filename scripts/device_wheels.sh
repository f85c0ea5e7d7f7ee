#!/usr/bin/env bash
# Download the wheels the GPU machine lacks for `python -m bench gpu` into .whl/ (git-ignored).
# The device image has torch, transformers, peft, accelerate, numpy, pandas, pyarrow, pillow, pyyaml,
# requests, click, cloudpickle, protobuf, jinja2 ... but not diffusers, Hydra, OmegaConf or MLflow.
# Usage: scripts/device_wheels.sh [PYTHON_VERSION]   (default 3.12: the device's python3; check with
#        `python3 --version` there). Versions are the ones this project is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${1:-3.12}"
PY="${PYTHON:-.venv/bin/python}"
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
WHEELS=(
  diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1
  mlflow-skinny==3.17.2 mlflow-tracing==3.17.2 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3
  sqlparse==0.6.1 cachetools==7.3.3 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
  opentelemetry-semantic-conventions==0.66b2 databricks-sdk==0.162.0 google-auth==2.63.0
  pyasn1==0.6.5 pyasn1-modules==0.4.2 python-dotenv==1.2.4 pydantic==2.14.4 pydantic-core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5 importlib-metadata==9.1.0 greenlet
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 cryptography==50.0.2 cffi pycparser
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
# Hydra's parser runtime is published as a source archive only: build its (pure-Python) wheel here.
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
du -sh .whl
