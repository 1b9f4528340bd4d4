# Build and install r1d, for distributions without its .deb.
#
#   make                              build everything (release; JOBS=2)
#   make install DESTDIR=/tmp/root PREFIX=/usr
#                                     install what `make` built (builds nothing)
#   make deb                          the Debian package (cargo-deb) of what `make` built;
#                                     CARGO_DEB_FLAGS="--output FILE" puts it elsewhere
#   make rpc-worker                   llama.cpp's rpc-server as target/release/r1d-rpc-worker
#                                     (scripts/build-rpc-worker); install and deb then ship it
#                                     with r1d-rpc-worker@.service (docs/rpc.md)
#
# Man pages and shell completions are generated from the built binaries
# (`r1d --generate-assets DIR`, `r1ctl --generate-assets DIR`, hidden options)
# into target/assets by `make assets`, which install runs.
#
# PREFIX defaults to /usr/local; the config stays /etc/r1d/r1d.toml (r1d reads
# it there) and an existing one is never overwritten. With a PREFIX other than
# /usr the units start $(BINDIR)/r1d with --plugin-dir $(PLUGINDIR). D-Bus and
# polkit files are installed when they exist in systemd/; dbus-daemon reads
# only /usr/share/dbus-1 and /etc/dbus-1, so use PREFIX=/usr for them.

PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
DATADIR ?= $(PREFIX)/share
PLUGINDIR ?= $(LIBDIR)/r1d/plugins
MANDIR ?= $(DATADIR)/man
SYSTEMDSYSTEMUNITDIR ?= $(LIBDIR)/systemd/system
SYSTEMDUSERUNITDIR ?= $(LIBDIR)/systemd/user
SYSUSERSDIR ?= $(LIBDIR)/sysusers.d
TMPFILESDIR ?= $(LIBDIR)/tmpfiles.d
BASHCOMPDIR ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR ?= $(DATADIR)/fish/vendor_completions.d
DBUSSYSTEMDIR ?= $(DATADIR)/dbus-1/system.d
DBUSSERVICEDIR ?= $(DATADIR)/dbus-1/system-services
DBUSSESSIONSERVICEDIR ?= $(DATADIR)/dbus-1/services
POLKITACTIONDIR ?= $(DATADIR)/polkit-1/actions
DOCDIR ?= $(DATADIR)/doc/r1d

CARGO ?= cargo
JOBS ?= 2
RELEASE := target/release
ASSETS := target/assets
DEBROOT := $(RELEASE)/deb-root
INSTALL ?= install
CARGO_DEB_FLAGS ?=
# The test backend (echo) is not installed.
PLUGINS = $(filter-out %/libr1_plugin_echo.so,$(wildcard $(RELEASE)/libr1_plugin_*.so))

# The units name /usr/bin/r1d; another prefix also needs the plugin directory.
ifeq ($(PREFIX),/usr)
UNIT_SED := s|/usr/bin/r1d|$(BINDIR)/r1d|
else
UNIT_SED := s|/usr/bin/r1d \(--[a-z]*\)|$(BINDIR)/r1d \1 --plugin-dir $(PLUGINDIR)|
endif

.PHONY: all assets install uninstall deb rpc-worker

all:
	$(CARGO) build --release -j$(JOBS) --workspace

rpc-worker:
	cp "$$(scripts/build-rpc-worker | tail -n 1)" $(RELEASE)/r1d-rpc-worker

assets:
	test -x $(RELEASE)/r1d -a -x $(RELEASE)/r1ctl || { echo 'run make first' >&2; exit 1; }
	rm -rf $(ASSETS)
	$(RELEASE)/r1d --generate-assets $(ASSETS)
	$(RELEASE)/r1ctl --generate-assets $(ASSETS)

install: assets
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(PLUGINDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(SYSTEMDSYSTEMUNITDIR) $(DESTDIR)$(SYSTEMDUSERUNITDIR) \
		$(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(BASHCOMPDIR) \
		$(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR) $(DESTDIR)$(SYSCONFDIR)/r1d \
		$(DESTDIR)$(DOCDIR)/examples
	$(INSTALL) -m 0755 $(RELEASE)/r1d $(RELEASE)/r1ctl $(DESTDIR)$(BINDIR)/
	$(INSTALL) -m 0644 $(PLUGINS) $(DESTDIR)$(PLUGINDIR)/
	if [ -d $(RELEASE)/llamacpp-cpu-variants ]; then \
		$(INSTALL) -d -m 0755 $(DESTDIR)$(PLUGINDIR)/llamacpp-cpu-variants && \
		$(INSTALL) -m 0644 $(RELEASE)/llamacpp-cpu-variants/* $(DESTDIR)$(PLUGINDIR)/llamacpp-cpu-variants/; fi
	$(INSTALL) -m 0644 $(ASSETS)/man/*.1 $(DESTDIR)$(MANDIR)/man1/
	for unit in r1d.service r1d.socket; do \
		sed -e '$(UNIT_SED)' systemd/$$unit > $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/$$unit; \
		sed -e '$(UNIT_SED)' systemd/user/$$unit > $(DESTDIR)$(SYSTEMDUSERUNITDIR)/$$unit; \
		chmod 0644 $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/$$unit $(DESTDIR)$(SYSTEMDUSERUNITDIR)/$$unit; \
	done
	if [ -x $(RELEASE)/r1d-rpc-worker ]; then \
		$(INSTALL) -m 0755 $(RELEASE)/r1d-rpc-worker $(DESTDIR)$(BINDIR)/ && \
		sed -e 's|/usr/bin/r1d-rpc-worker|$(BINDIR)/r1d-rpc-worker|' systemd/r1d-rpc-worker@.service \
			> $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/r1d-rpc-worker@.service && \
		chmod 0644 $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/r1d-rpc-worker@.service && \
		$(INSTALL) -m 0644 systemd/rpc-worker.conf.example $(DESTDIR)$(DOCDIR)/examples/rpc-worker.conf && \
		$(INSTALL) -m 0644 docs/rpc.md $(DESTDIR)$(DOCDIR)/rpc.md; fi
	$(INSTALL) -m 0644 systemd/r1d.sysusers $(DESTDIR)$(SYSUSERSDIR)/r1d.conf
	$(INSTALL) -m 0644 systemd/r1d.tmpfiles $(DESTDIR)$(TMPFILESDIR)/r1d.conf
	$(INSTALL) -m 0644 $(ASSETS)/completions/r1d.bash $(DESTDIR)$(BASHCOMPDIR)/r1d
	$(INSTALL) -m 0644 $(ASSETS)/completions/r1ctl.bash $(DESTDIR)$(BASHCOMPDIR)/r1ctl
	$(INSTALL) -m 0644 $(ASSETS)/completions/_r1d $(ASSETS)/completions/_r1ctl $(DESTDIR)$(ZSHCOMPDIR)/
	$(INSTALL) -m 0644 $(ASSETS)/completions/r1d.fish $(ASSETS)/completions/r1ctl.fish $(DESTDIR)$(FISHCOMPDIR)/
	$(INSTALL) -m 0644 README.md $(DESTDIR)$(DOCDIR)/
	$(INSTALL) -m 0644 systemd/r1d.service.d/network.conf.example $(DESTDIR)$(DOCDIR)/examples/network.conf
	$(INSTALL) -m 0644 systemd/user/r1d.service.d/sandbox.conf.example $(DESTDIR)$(DOCDIR)/examples/user-sandbox.conf
	$(INSTALL) -m 0644 systemd/r1d.service.d/tcp.conf.example $(DESTDIR)$(DOCDIR)/examples/tcp.conf
	$(INSTALL) -m 0644 systemd/r1d-tcp.socket $(DESTDIR)$(DOCDIR)/examples/r1d-tcp.socket
	test -e $(DESTDIR)$(SYSCONFDIR)/r1d/r1d.toml || \
		$(INSTALL) -m 0644 systemd/r1d.toml $(DESTDIR)$(SYSCONFDIR)/r1d/r1d.toml
	if [ -e systemd/org.r1d.R1.conf ]; then \
		$(INSTALL) -D -m 0644 systemd/org.r1d.R1.conf $(DESTDIR)$(DBUSSYSTEMDIR)/org.r1d.R1.conf; fi
	if [ -e systemd/org.r1d.R1.service ]; then \
		$(INSTALL) -D -m 0644 systemd/org.r1d.R1.service $(DESTDIR)$(DBUSSERVICEDIR)/org.r1d.R1.service; fi
	if [ -e systemd/user/org.r1d.R1.service ]; then \
		$(INSTALL) -d $(DESTDIR)$(DBUSSESSIONSERVICEDIR) && \
		sed -e '$(UNIT_SED)' systemd/user/org.r1d.R1.service > $(DESTDIR)$(DBUSSESSIONSERVICEDIR)/org.r1d.R1.service && \
		chmod 0644 $(DESTDIR)$(DBUSSESSIONSERVICEDIR)/org.r1d.R1.service; fi
	if [ -e systemd/org.r1d.R1.policy ]; then \
		$(INSTALL) -D -m 0644 systemd/org.r1d.R1.policy $(DESTDIR)$(POLKITACTIONDIR)/org.r1d.R1.policy; fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/r1d $(DESTDIR)$(BINDIR)/r1ctl $(DESTDIR)$(BINDIR)/r1d-rpc-worker \
		$(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/r1d-rpc-worker@.service \
		$(DESTDIR)$(MANDIR)/man1/r1d*.1 $(DESTDIR)$(MANDIR)/man1/r1ctl*.1 \
		$(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/r1d.service $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/r1d.socket \
		$(DESTDIR)$(SYSTEMDUSERUNITDIR)/r1d.service $(DESTDIR)$(SYSTEMDUSERUNITDIR)/r1d.socket \
		$(DESTDIR)$(SYSUSERSDIR)/r1d.conf $(DESTDIR)$(TMPFILESDIR)/r1d.conf \
		$(DESTDIR)$(BASHCOMPDIR)/r1d $(DESTDIR)$(BASHCOMPDIR)/r1ctl \
		$(DESTDIR)$(ZSHCOMPDIR)/_r1d $(DESTDIR)$(ZSHCOMPDIR)/_r1ctl \
		$(DESTDIR)$(FISHCOMPDIR)/r1d.fish $(DESTDIR)$(FISHCOMPDIR)/r1ctl.fish \
		$(DESTDIR)$(DBUSSYSTEMDIR)/org.r1d.R1.conf $(DESTDIR)$(DBUSSERVICEDIR)/org.r1d.R1.service \
		$(DESTDIR)$(DBUSSESSIONSERVICEDIR)/org.r1d.R1.service \
		$(DESTDIR)$(POLKITACTIONDIR)/org.r1d.R1.policy
	rm -rf $(DESTDIR)$(PLUGINDIR) $(DESTDIR)$(DOCDIR)

# The .deb holds exactly what `make install PREFIX=/usr` installs, staged in
# $(DEBROOT) ([package.metadata.deb] in daemon/Cargo.toml lists it).
deb:
	rm -rf $(DEBROOT)
	$(MAKE) install DESTDIR=$(CURDIR)/$(DEBROOT) PREFIX=/usr \
		ZSHCOMPDIR=/usr/share/zsh/vendor-completions
	$(CARGO) deb -p r1d --no-build $(CARGO_DEB_FLAGS)
