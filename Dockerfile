# vhostfsd container image: build with the .NET SDK, run on the .NET runtime.
# Untested here (no Docker engine on the build machines); see README.md.
#
#   docker build -t vhostfsd .
#   docker run --rm --cap-add SYS_ADMIN -v /srv/share:/srv/share -v /run/vhostfsd:/run/vhostfsd \
#     vhostfsd --socket-path /run/vhostfsd/share.sock --shared-dir /srv/share

FROM mcr.microsoft.com/dotnet/sdk:10.0 AS build
WORKDIR /src
# The whole tree (minus .dockerignore): the daemon's project references decide what builds.
COPY . .
RUN dotnet publish src/Vhostfsd/Vhostfsd.csproj -c Release -o /out

FROM mcr.microsoft.com/dotnet/runtime:10.0
LABEL org.opencontainers.image.title="vhostfsd" \
      org.opencontainers.image.description="virtio-fs vhost-user back-end, a drop-in for virtiofsd"
COPY --from=build /out /opt/vhostfsd
# The daemon runs as root: it switches file-system credentials per request and builds its
# own namespace sandbox.
ENTRYPOINT ["dotnet", "/opt/vhostfsd/vhostfsd.dll"]
CMD ["--help"]
