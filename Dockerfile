# syntax=docker/dockerfile:1
# choreo-dp: one image for the operator and the agent (`choreo-dp operator`, `choreo-dp agent`).
#   docker build -t ghcr.io/choreo-dp/choreo-dp:0.1.0 .
# The helm chart runs command ["choreo-dp"] with the verb and flags as args.

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: wheels for the project and its dependencies, installed into a virtualenv ----------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The files pyproject.toml needs to build the package: metadata, readme and the sources.
COPY pyproject.toml README.md ./
COPY src ./src
# The image is the data plane only (choreo_dp and the wire protocol it speaks, no extras): the reference
# control plane, the emulated API and the sandbox are left out of the wheel, so their verbs answer
# with the extra to install instead of shipping FastAPI, uvicorn or the emulator to customers.
RUN rm -rf src/choreo_cp src/kube_emulator src/choreo_sandbox \
 && pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/choreo-dp \
 && /opt/choreo-dp/bin/pip install --no-index --find-links /wheels choreo-dp \
 && /opt/choreo-dp/bin/choreo-dp --version

# --- runtime: the virtualenv only; no compilers, no pip cache, no sources ----------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/choreo-dp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/choreo-dp /opt/choreo-dp
# Non-root, numeric (runAsNonRoot can verify it); 65532 is the conventional "nonroot" uid.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /tmp
EXPOSE 9090 9091 8081 8082
ENTRYPOINT ["choreo-dp"]
CMD ["--help"]
