# Berth's container image, laid out as registry:2 is: data in /var/lib/registry, config
# in /etc/docker/registry/config.yml, port 5000. The base is `scratch`, so building needs
# no download: scripts/build-image.sh builds the static binary first, then this file.
FROM scratch
# bin/berth, and bin/registry -> berth (the name registry:2's image answers to).
COPY target/image/bin/ /bin/
COPY docker/config.yml /etc/docker/registry/config.yml
# CA certificates for outgoing TLS (proxy upstreams, webhooks), staged from the build
# machine's Debian bundle. To trust a private CA, mount a bundle over this file or set
# SSL_CERT_FILE to one (it then replaces this store).
COPY target/image/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# scratch has no /tmp (SQLite may put temporary files there); WORKDIR creates it.
WORKDIR /tmp
WORKDIR /
ENV TMPDIR=/tmp
VOLUME ["/var/lib/registry"]
EXPOSE 5000
# As registry:2: arguments after the image name replace the config path.
ENTRYPOINT ["/bin/berth", "serve"]
CMD ["/etc/docker/registry/config.yml"]
