# The memory hog (tests/images/hog/hog.c) as a one-layer image holding one static binary, for
# kind (`docker build -f tests/e2e/kind/hog.Dockerfile tests/images/hog`). The local cluster
# builds the same binary with `gcc -static` and imports it (hack/local-cluster.sh images).
FROM debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY hog.c /src/hog.c
RUN gcc -static -O2 -Wall -o /hog /src/hog.c

FROM scratch
COPY --from=build /hog /hog
ENTRYPOINT ["/hog"]
