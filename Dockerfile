# vhostfsd container image: the SDK image compiles the native executable (Native AOT, linked
# by clang), which is then copied alone into a minimal Debian image — no .NET runtime in it.
# The Docker engine does not run on the machines this project is built on, so this file is
# untested there; `make build` runs the same publish step and the tests run its output.
#
#   docker build -t vhostfsd .
#   docker run --rm --cap-add SYS_ADMIN -v /srv/share:/srv/share -v /run/vhostfsd:/run/vhostfsd \
#     vhostfsd --socket-path /run/vhostfsd/share.sock --shared-dir /srv/share

FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The whole tree (minus .dockerignore): the daemon's project references decide what builds.
COPY . .
RUN dotnet publish src/Vhostfsd/Vhostfsd.csproj -c Release -o /out

# The executable needs only glibc (libc, libm).
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="vhostfsd" \
      org.opencontainers.image.description="virtio-fs vhost-user back-end, a drop-in for virtiofsd"
COPY --from=build /out/vhostfsd /usr/bin/vhostfsd
# The daemon runs as root: it switches file-system credentials per request and builds its
# own namespace sandbox.
ENTRYPOINT ["/usr/bin/vhostfsd"]
CMD ["--help"]
