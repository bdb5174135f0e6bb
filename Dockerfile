# syntax=docker/dockerfile:1
#
# One image for both parts of exec-reaper: the provider and the deleter are
# built from the same module at the same commit and released together, so one
# image means one build, one scan and one tag to pin, and the two can never run
# mismatched versions of the record contract they share. The Helm chart picks
# the binary with each Deployment's `command`.
#
#   make image        # docker build -t exec-reaper:<appVersion from charts/exec-reaper/Chart.yaml> .
#
# Static binaries (CGO_ENABLED=0) on distroless/static: no shell, no package
# manager, no libc; runs as the nonroot user (65532), which the chart's
# securityContext also requires. No secrets are used or copied.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/exec-reaper-provider ./cmd/exec-reaper-deleter

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="exec-reaper" \
      org.opencontainers.image.description="Evicts pods that someone entered with kubectl exec, attach, cp or debug (Gatekeeper external-data provider and deleter)" \
      org.opencontainers.image.source="https://github.com/exec-reaper/exec-reaper"
COPY --from=build /out/exec-reaper-provider /out/exec-reaper-deleter /usr/local/bin/
USER 65532:65532
# No entrypoint: the chart runs exec-reaper-provider or exec-reaper-deleter.
CMD ["exec-reaper-provider", "--help"]
