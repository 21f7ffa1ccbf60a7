# Rheostat image: `docker build -t rheostat:0.1.0 .`
# The entry point is the `rheostat` CLI; the default command runs the daemon with the policy file
# mounted at /etc/rheostat/policy.yaml (see deploy/k8s/ and deploy/docker-compose.yml). The broker
# password comes from RHEOSTAT_MQTT_PASSWORD or a secrets directory (/run/secrets/rheostat).
# The same image runs the node agent (`rheostat agent`, deploy/k8s/agent-daemonset.yaml): NVML's
# bindings and gRPC are in it; the driver's libnvidia-ml.so comes from the node (NVIDIA container
# toolkit).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY agent/ agent/
COPY controller/ controller/
COPY policies/ policies/
COPY simulator/ simulator/
# Wheels for the package, the `openadr` extra (the OpenADR VEN a site's policy may configure), the
# `agent` extra (NVML and gRPC, for the node agent's DaemonSet) and their dependencies, at the
# versions the test suite passed with. `bench/` is not in the wheel, so it is not copied; `demo`
# needs no extra with --broker (docker-compose.yml) and `sim` (matplotlib, `simulate --report`)
# has no use in this image.
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt '.[openadr,agent]'

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --no-create-home rheostat
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
# /metrics, /livez and /readyz (metrics.port in the policy file; set metrics.host to 0.0.0.0).
EXPOSE 19464
# SIGTERM makes the controller publish its `offline` status and leave racks on expiring commands.
STOPSIGNAL SIGTERM
ENTRYPOINT ["rheostat"]
CMD ["run", "--policy", "/etc/rheostat/policy.yaml"]
