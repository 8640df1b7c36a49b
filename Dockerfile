# perceiver serve in a container: Debian 12, the CI's dependencies (scripts/install-deps.sh), a non-root user.
#   docker build -t perceiver-serve .
#   docker run --rm -p 127.0.0.1:8080:8080 -v $PWD/models:/models:ro perceiver-serve --model /models/my-model
# See docs/serving.md (no authentication: keep it behind a proxy or a private network).
FROM debian:12

COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates && \
    bash /tmp/install-deps.sh && rm -rf /var/lib/apt/lists/*

COPY . /src
RUN cmake -S /src -B /src/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPERCEIVER_BUILD_TESTS=OFF \
          -DPERCEIVER_BUILD_BENCH=OFF && \
    ninja -C /src/build perceiver_cli && \
    install -m 0755 /src/build/bin/perceiver /usr/local/bin/perceiver && \
    rm -rf /src/build

RUN useradd --create-home --uid 10001 perceiver
USER perceiver
WORKDIR /home/perceiver
ENV HF_HOME=/home/perceiver/.cache/huggingface
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /v2/health/ready HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ' 200 ' <&3"]
ENTRYPOINT ["perceiver", "serve", "--host", "0.0.0.0", "--port", "8080"]
CMD ["--help"]
