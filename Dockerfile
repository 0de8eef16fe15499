# One image for every component: infergate (cgo build: NVML and the PJRT
# loader) and the default model, which `make model` fetches from npm.
#   docker build -t infergate:dev .
# On a GPU node the engine also needs the PJRT CUDA plugin and CUDA
# libraries (README, "GPU"); this image serves on the CPU as it is.
FROM golang:1.26-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN make model build VERSION=$(git describe --tags --always 2>/dev/null || echo dev)

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /src/bin/infergate /usr/local/bin/infergate
# engine.models[].path defaults to models/use-lite, relative to /app.
COPY --from=build /src/models /app/models
USER 65532:65532
ENTRYPOINT ["infergate"]
