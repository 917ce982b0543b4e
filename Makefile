# vhostfsd — build, test, run. See README.md.
SHELL := /bin/bash
CONFIG ?= Release
DOTNET ?= dotnet
SLN := vhostfsd.sln
OUT := out
PREFIX ?= /usr/local

.PHONY: all deps restore build test test-unit run demo bench install clean

all: build

deps:
	@scripts/install-deps.sh

restore:
	$(DOTNET) restore $(SLN)

build: restore
	$(DOTNET) build $(SLN) -c $(CONFIG) --no-restore

# The README's test command. Installs what it needs first.
test: deps build
	$(DOTNET) test $(SLN) -c $(CONFIG) --no-build --logger "console;verbosity=normal"

# Unit and integration tests only (no real guest).
test-unit: build
	$(DOTNET) test $(SLN) -c $(CONFIG) --no-build --filter "Category!=E2E"

# Run the daemon: make run ARGS="--socket-path /tmp/vfs.sock --shared-dir /srv/share"
run: build
	$(DOTNET) src/Vhostfsd/bin/$(CONFIG)/net10.0/vhostfsd.dll $(ARGS)

clean:
	$(DOTNET) clean $(SLN) -c $(CONFIG) >/dev/null
	rm -rf $(OUT)
