# vhostfsd — build, test, run. See README.md.
SHELL := /bin/bash
CONFIG ?= Release
DOTNET ?= dotnet
SLN := vhostfsd.sln
OUT := out
PREFIX ?= /usr/local

# The program that ships: one native (AOT) executable, published by `make build`.
NATIVE_DIR := src/Vhostfsd/bin/$(CONFIG)/native
NATIVE := $(NATIVE_DIR)/vhostfsd
# The same program on the JIT, for the debugger (make run-jit).
JIT_DLL := src/Vhostfsd/bin/$(CONFIG)/net10.0/vhostfsd.dll
# FIXED_ADDRESS=1 links the executable at a fixed address (not PIE) with its type data stored
# ready to use: about 0.9 MiB less idle memory, no ASLR for the executable (src/Vhostfsd/Vhostfsd.csproj).
FIXED_ADDRESS ?= 0
PUBLISH_FLAGS := $(if $(filter 1,$(FIXED_ADDRESS)),-p:VhostfsdFixedAddress=true)

.PHONY: all deps build-deps restore build test test-unit run run-jit fuse-mount-run demo bench bench-quick bench-micro install deb clean e2e fuzz fuzz-afl soak

all: build

deps:
	@scripts/install-deps.sh

build-deps:
	@scripts/install-deps.sh --build

restore:
	$(DOTNET) restore $(SLN)

# Builds the solution, then compiles the daemon to native code (clang links it) from that build.
build: build-deps restore
	$(DOTNET) build $(SLN) -c $(CONFIG) --no-restore
	$(DOTNET) publish src/Vhostfsd/Vhostfsd.csproj -c $(CONFIG) --no-build --nologo $(PUBLISH_FLAGS) -o $(NATIVE_DIR)

# The README's test command. Installs what it needs first.
# The projects run in parallel and their output interleaves; the failed tests are listed again
# at the end (scripts/failed-tests.sh), where a CI log's tail shows them.
test: deps build
	@mkdir -p $(OUT)
	@set -o pipefail; $(DOTNET) test $(SLN) -c $(CONFIG) --no-build --logger "console;verbosity=normal" 2>&1 | tee $(OUT)/test-console.log; \
	status=$$?; if [ $$status -ne 0 ]; then scripts/failed-tests.sh $(OUT)/test-console.log; fi; exit $$status

# Unit and integration tests only (no real guest).
test-unit: build
	$(DOTNET) test $(SLN) -c $(CONFIG) --no-build --filter "Category!=E2E"

# Run the daemon: make run ARGS="--socket-path /tmp/vfs.sock --shared-dir /srv/share"
run: build
	$(NATIVE) $(ARGS)

# The same daemon on the JIT (dotnet vhostfsd.dll), for a managed debugger or dotnet-trace.
run-jit: build
	$(DOTNET) $(JIT_DLL) $(ARGS)

# Run a command against a fresh share mounted through the host kernel's FUSE (vhostfsd --fuse-mount):
# make fuse-mount-run CMD="prove -r /opt/pjdfstest/tests" ARGS="--xattr --posix-lock"
# CMD runs in the mount point (also in $$VHOSTFSD_MOUNT); the target fails with CMD's status.
# Needs root and /dev/fuse; docs/testing.md, "Host FUSE mount".
fuse-mount-run: deps build
	@scripts/fuse-mount-run.sh "$(CMD)" $(ARGS)

# The real-guest suite alone (tests/E2E, docs/e2e.md): boots QEMU against the reference
# virtiofsd and vhostfsd. The guest kernel is downloaded once into .e2e-cache/.
e2e: deps build
	$(DOTNET) test tests/E2E/E2E.csproj -c $(CONFIG) --no-build --logger "console;verbosity=normal"

# The workload benchmark (docs/performance.md): vhostfsd against the reference virtiofsd and the native
# syscall floor, on a fresh tmpfs and on disk, 3 alternating repetitions. Needs root (tmpfs mount, the
# reference daemon's chroot). ARGS adds options: make bench ARGS="--workloads metadata --callers 16".
# bench-quick is the CI-size run; bench-micro runs the BenchmarkDotNet hot-path benchmarks.
BENCH := $(DOTNET) bench/Workload/bin/$(CONFIG)/net10.0/vhostfs-bench.dll
bench: deps build
	$(BENCH) $(ARGS)

bench-quick: deps build
	$(BENCH) --quick $(ARGS)

bench-micro: build
	$(DOTNET) bench/Micro/bin/$(CONFIG)/net10.0/Micro.dll $(if $(ARGS),$(ARGS),--filter '*')

# The README's first command: serve a demo directory to a throwaway guest and show both
# sides. DAEMON=reference runs /usr/lib/qemu/virtiofsd instead of vhostfsd.
DAEMON ?= vhostfsd
demo: deps
	@if [ "$(DAEMON)" != reference ]; then \
	  echo "== building vhostfsd ($(CONFIG))"; mkdir -p .e2e-cache; \
	  $(MAKE) --no-print-directory build > .e2e-cache/demo-build.log 2>&1 || \
	  { tail -n 30 .e2e-cache/demo-build.log; exit 1; }; fi
	@CONFIG=$(CONFIG) scripts/e2e/demo.sh $(DAEMON)

# Installs the native executable as $(PREFIX)/bin/vhostfsd, QEMU's vhost-user descriptor
# (libvirt finds the daemon through it) and the systemd units. Nothing else is needed where it
# runs: no .NET runtime. DESTDIR stages the whole tree for packaging.
VHOST_USER_DIR ?= /usr/share/qemu/vhost-user
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
install: build
	install -d "$(DESTDIR)$(PREFIX)/bin" "$(DESTDIR)$(VHOST_USER_DIR)" "$(DESTDIR)$(SYSTEMD_UNIT_DIR)"
	install -m 755 $(NATIVE) "$(DESTDIR)$(PREFIX)/bin/vhostfsd"
	sed -e 's|"binary": "[^"]*"|"binary": "$(PREFIX)/bin/vhostfsd"|' packaging/50-vhostfsd.json \
	  > "$(DESTDIR)$(VHOST_USER_DIR)/50-vhostfsd.json"
	install -m 644 packaging/systemd/vhostfsd@.socket "$(DESTDIR)$(SYSTEMD_UNIT_DIR)/vhostfsd@.socket"
	sed -e "s|@BINDIR@|$(PREFIX)/bin|" packaging/systemd/vhostfsd@.service > "$(DESTDIR)$(SYSTEMD_UNIT_DIR)/vhostfsd@.service"
	chmod 644 "$(DESTDIR)$(SYSTEMD_UNIT_DIR)/vhostfsd@.service"

# The Debian package (packaging/deb.sh): out/vhostfsd_VERSION_ARCH.deb from the native build.
deb: build
	@mkdir -p $(OUT)
	CONFIG=$(CONFIG) packaging/deb.sh $(OUT)

clean:
	$(DOTNET) clean $(SLN) -c $(CONFIG) >/dev/null
	rm -rf $(OUT) $(NATIVE_DIR)

# The fuzz targets (tests/Fuzz) with a long budget; make test runs them with a short one.
# FUZZ_CASES is per target; FUZZ_SECONDS caps each target's time; FUZZ_SEED picks the run;
# FUZZ_CASE=N replays one case. Summaries are appended to $(OUT)/fuzz-report.txt.
FUZZ_CASES ?= 200000
FUZZ_SECONDS ?=
FUZZ_SEED ?=
fuzz: build
	@mkdir -p $(OUT)
	FUZZ_CASES=$(FUZZ_CASES) FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SEED=$(FUZZ_SEED) FUZZ_REPORT=$(abspath $(OUT))/fuzz-report.txt \
	  $(DOTNET) test tests/Fuzz/Fuzz.csproj -c $(CONFIG) --no-build --logger "console;verbosity=detailed"
	@cat $(OUT)/fuzz-report.txt

# Coverage-guided fuzzing (docs/testing.md): afl-fuzz (Debian's afl++) through SharpFuzz on the pure
# decoders — fuse-request, descriptor-chain, vhost-user, xattrmap, or all. make test runs each for a
# short budget (tests/Fuzz AflFuzzTests, AFL_SECONDS); this runs SECONDS per target. One line per
# target (executions, edges, crashes) is appended to $(OUT)/afl-report.txt; crash inputs stay in
# $(OUT)/afl/TARGET/crashes.
TARGET ?= all
SECONDS ?= 60
fuzz-afl: deps build
	@scripts/fuzz-afl.sh $(TARGET) $(SECONDS)

# The soak (tests/Hardening): 16 callers on 4 queues, mixed workload, then the host directory and the
# daemon's fds and RSS are checked. make test runs 16,000 operations; this runs SOAK_OPS of them.
# Figures are appended to $(OUT)/soak-report.txt.
SOAK_OPS ?= 1000000
soak: build
	@mkdir -p $(OUT)
	SOAK_OPS=$(SOAK_OPS) SOAK_REPORT=$(abspath $(OUT))/soak-report.txt \
	  $(DOTNET) test tests/Hardening/Hardening.csproj -c $(CONFIG) --no-build --filter "Category=Soak" --logger "console;verbosity=detailed"
	@cat $(OUT)/soak-report.txt
