#!/usr/bin/env bash
# kafka_secure.sh — scripts/kafka.sh's throwaway single-node KRaft broker with a SASL_SSL
# listener (TLS + SASL/SCRAM-SHA-512), to test kanary against a secured cluster. The test CA,
# the broker's certificate and the SCRAM user are made from scratch on every `start`, with
# openssl and keytool; nothing of it is checked in.
#
# Usage:
#   scripts/kafka_secure.sh start     make certificates, start the broker, create the SCRAM
#                                     user, wait until a Java client authenticates over SASL_SSL
#   scripts/kafka_secure.sh stop      stop the broker (kafka.sh stop)
#   scripts/kafka_secure.sh status    exit 0 iff the broker answers over SASL_SSL
#   scripts/kafka_secure.sh certs     only make the certificates
#   scripts/kafka_secure.sh run CLASS ARGS...   a Kafka tool class (kafka.sh run); pass
#                                     --command-config / --consumer.config client.properties
#
# Listeners, all on 127.0.0.1:
#   KAFKA_SASL_SSL_PORT  SASL_SSL, SCRAM-SHA-512 only: what clients under test use
#   KAFKA_PORT           PLAINTEXT: the broker's own listener (kafka.sh's readiness probe, and
#                        the admin request that creates the SCRAM user)
#   KAFKA_CONTROLLER_PORT  KRaft controller
#
# Files in KAFKA_SECURE_DIR:
#   certs/ca.pem, ca.key          the test CA (self-signed)
#   certs/broker.pem, broker.key  the broker's certificate, signed by the CA, for
#                                 DNS:localhost and IP:127.0.0.1 (subjectAltName)
#   certs/broker.p12              the broker's keystore (PKCS12: key, certificate, CA)
#   certs/truststore.p12          the CA alone, for Java clients (made with keytool)
#   certs/rogue-ca.pem            a second CA that signed nothing here ("untrusted" tests)
#   client.properties             Java client settings: SASL_SSL, SCRAM-SHA-512, truststore
#   kafka/                        the broker's KAFKA_DATA (config, log dirs, kafka.log)
#
# Environment:
#   KAFKA_SECURE_DIR       default <repo>/target/kafka-secure; wiped on start
#   KAFKA_PORT             default 19192 (the main test broker of scripts/test.sh is on 19092)
#   KAFKA_CONTROLLER_PORT  default KAFKA_PORT + 1
#   KAFKA_SASL_SSL_PORT    default KAFKA_PORT + 2
#   KAFKA_SCRAM_USER       default kanary
#   KAFKA_SCRAM_PASSWORD   default kanary-test-secret (letters, digits, . _ - only)
#   KAFKA_STORE_PASSWORD   keystore and truststore password, default kanary-test-store
#   KAFKA_EXTRA_CONFIG     more server.properties lines, after the SASL_SSL ones
#   anything else of scripts/kafka.sh (KANARY_CACHE, KAFKA_START_TIMEOUT, ...)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd -P)
KAFKA_SH="$SCRIPT_DIR/kafka.sh"

log() { printf 'kafka_secure.sh: %s\n' "$*" >&2; }
die() { printf 'kafka_secure.sh: error: %s\n' "$*" >&2; exit 1; }

KAFKA_SECURE_DIR=${KAFKA_SECURE_DIR:-$REPO_ROOT/target/kafka-secure}
KAFKA_PORT=${KAFKA_PORT:-19192}
[[ $KAFKA_PORT =~ ^[0-9]+$ ]] || die "KAFKA_PORT must be a port number, got '$KAFKA_PORT'"
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_SASL_SSL_PORT=${KAFKA_SASL_SSL_PORT:-$((KAFKA_PORT + 2))}
KAFKA_SCRAM_USER=${KAFKA_SCRAM_USER:-kanary}
KAFKA_SCRAM_PASSWORD=${KAFKA_SCRAM_PASSWORD:-kanary-test-secret}
KAFKA_STORE_PASSWORD=${KAFKA_STORE_PASSWORD:-kanary-test-store}
USER_EXTRA_CONFIG=${KAFKA_EXTRA_CONFIG:-}

for v in KAFKA_CONTROLLER_PORT KAFKA_SASL_SSL_PORT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a port number, got '${!v}'"
done
[[ $KAFKA_SASL_SSL_PORT != "$KAFKA_PORT" && $KAFKA_SASL_SSL_PORT != "$KAFKA_CONTROLLER_PORT" ]] ||
    die "KAFKA_SASL_SSL_PORT must differ from KAFKA_PORT and KAFKA_CONTROLLER_PORT"
# Safe inside ConfigCommand's [k=v,...] syntax, JAAS quotes and kanary's comma-separated options.
for v in KAFKA_SCRAM_USER KAFKA_SCRAM_PASSWORD KAFKA_STORE_PASSWORD; do
    [[ ${!v} =~ ^[A-Za-z0-9._-]+$ ]] || die "$v may hold only letters, digits, '.', '_' and '-'"
done

CERTS="$KAFKA_SECURE_DIR/certs"
CLIENT_PROPS="$KAFKA_SECURE_DIR/client.properties"
MARKER=".kanary-kafka-secure"
SASL_BOOTSTRAP="127.0.0.1:$KAFKA_SASL_SSL_PORT"

# kafka.sh sees the same ports and data dir on every call.
export KAFKA_PORT KAFKA_CONTROLLER_PORT
export KAFKA_DATA="$KAFKA_SECURE_DIR/kafka"

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is needed ($2)"
}

port_open() {
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# ---------------------------------------------------------------------------------------------
# Certificates

# A self-signed CA: NAME is the file stem under certs/, CN its subject.
make_ca() {
    local name=$1 cn=$2
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 \
        -keyout "$CERTS/$name.key" -out "$CERTS/$name.pem" -subj "/O=kanary tests/CN=$cn" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null ||
        die "openssl could not make the CA $name"
}

cmd_certs() {
    need openssl "apt-get install -y openssl"
    need keytool "it ships with the JDK (apt-get install -y openjdk-17-jre-headless)"
    rm -rf "$CERTS"
    mkdir -p "$CERTS"
    make_ca ca "kanary test CA"
    make_ca rogue-ca "kanary rogue CA"

    # The broker: key, request, certificate signed by the test CA for localhost / 127.0.0.1.
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$CERTS/broker.key" \
        -out "$CERTS/broker.csr" -subj "/O=kanary tests/CN=localhost" 2>/dev/null ||
        die "openssl could not make the broker's key and request"
    cat >"$CERTS/broker.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EOF
    openssl x509 -req -sha256 -days 2 -in "$CERTS/broker.csr" -CA "$CERTS/ca.pem" \
        -CAkey "$CERTS/ca.key" -CAcreateserial -extfile "$CERTS/broker.ext" \
        -out "$CERTS/broker.pem" 2>/dev/null || die "openssl could not sign the broker's certificate"
    openssl verify -CAfile "$CERTS/ca.pem" "$CERTS/broker.pem" >/dev/null ||
        die "the broker's certificate does not verify against the test CA"
    if openssl verify -CAfile "$CERTS/rogue-ca.pem" "$CERTS/broker.pem" >/dev/null 2>&1; then
        die "the broker's certificate verifies against the rogue CA too"
    fi

    # Keystore (openssl) and truststore (keytool), both PKCS12; check Java reads them.
    openssl pkcs12 -export -name broker -in "$CERTS/broker.pem" -inkey "$CERTS/broker.key" \
        -certfile "$CERTS/ca.pem" -out "$CERTS/broker.p12" \
        -passout "pass:$KAFKA_STORE_PASSWORD" || die "openssl could not write the broker keystore"
    keytool -importcert -noprompt -alias kanary-test-ca -file "$CERTS/ca.pem" \
        -keystore "$CERTS/truststore.p12" -storetype PKCS12 \
        -storepass "$KAFKA_STORE_PASSWORD" >/dev/null 2>&1 || die "keytool could not write the truststore"
    entries=$(keytool -list -keystore "$CERTS/broker.p12" -storetype PKCS12 \
        -storepass "$KAFKA_STORE_PASSWORD" 2>/dev/null) || entries=
    [[ $entries == *PrivateKeyEntry* ]] ||
        die "Java's keytool cannot read the broker keystore $CERTS/broker.p12"
    log "certificates in $CERTS (CA, broker for localhost/127.0.0.1, keystore, truststore, rogue CA)"
}

# ---------------------------------------------------------------------------------------------
# Broker

write_client_props() {
    cat >"$CLIENT_PROPS" <<EOF
# Written by scripts/kafka_secure.sh: Java client settings for $SASL_BOOTSTRAP.
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_SCRAM_USER" password="$KAFKA_SCRAM_PASSWORD";
ssl.truststore.type=PKCS12
ssl.truststore.location=$CERTS/truststore.p12
ssl.truststore.password=$KAFKA_STORE_PASSWORD
request.timeout.ms=10000
default.api.timeout.ms=20000
EOF
}

secure_config() {
    # Appended to kafka.sh's server.properties: later keys win.
    cat <<EOF
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$CERTS/broker.p12
ssl.keystore.password=$KAFKA_STORE_PASSWORD
ssl.key.password=$KAFKA_STORE_PASSWORD
ssl.client.auth=none
ssl.enabled.protocols=TLSv1.3,TLSv1.2
EOF
    [[ -z $USER_EXTRA_CONFIG ]] || printf '%s\n' "$USER_EXTRA_CONFIG"
}

# True when a Java client authenticates over SASL_SSL and lists topics.
sasl_answers() {
    port_open "$KAFKA_SASL_SSL_PORT" || return 1
    timeout 40 "$KAFKA_SH" run org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$SASL_BOOTSTRAP" --command-config "$CLIENT_PROPS" --list \
        </dev/null >/dev/null 2>"$KAFKA_SECURE_DIR/probe.err"
}

# Creates KAFKA_SECURE_DIR, or checks that it is ours (so a mistaken value is never wiped);
# with "wipe", empties it first.
claim_dir() {
    if [[ -e $KAFKA_SECURE_DIR && ! -d $KAFKA_SECURE_DIR ]]; then
        die "KAFKA_SECURE_DIR=$KAFKA_SECURE_DIR exists and is not a directory"
    fi
    if [[ -d $KAFKA_SECURE_DIR && ! -f $KAFKA_SECURE_DIR/$MARKER ]] &&
        [[ -n $(ls -A "$KAFKA_SECURE_DIR") ]]; then
        die "KAFKA_SECURE_DIR=$KAFKA_SECURE_DIR is not empty and was not created by kafka_secure.sh; refusing to use it"
    fi
    [[ ${1:-} != wipe ]] || rm -rf "$KAFKA_SECURE_DIR"
    mkdir -p "$KAFKA_SECURE_DIR" || die "cannot create $KAFKA_SECURE_DIR"
    touch "$KAFKA_SECURE_DIR/$MARKER"
}

cmd_start() {
    local started=$SECONDS
    if [[ -f $CLIENT_PROPS ]] && "$KAFKA_SH" status >/dev/null 2>&1; then
        sasl_answers || die "a broker runs for $KAFKA_DATA but does not answer over SASL_SSL on $SASL_BOOTSTRAP (see $KAFKA_SECURE_DIR/probe.err)"
        log "already running; SASL_SSL on $SASL_BOOTSTRAP"
        return 0
    fi
    need java "apt-get install -y openjdk-17-jre-headless"
    if port_open "$KAFKA_SASL_SSL_PORT"; then
        die "port 127.0.0.1:$KAFKA_SASL_SSL_PORT is already in use (set KAFKA_SASL_SSL_PORT or KAFKA_PORT)"
    fi
    claim_dir wipe
    cmd_certs
    write_client_props
    KAFKA_FRESH=1 KAFKA_EXTRA_CONFIG=$(secure_config) "$KAFKA_SH" start

    # The SCRAM credential, through the PLAINTEXT listener (kafka-configs).
    "$KAFKA_SH" run kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
        --alter --entity-type users --entity-name "$KAFKA_SCRAM_USER" \
        --add-config "SCRAM-SHA-512=[iterations=8192,password=$KAFKA_SCRAM_PASSWORD]" \
        </dev/null >/dev/null || die "could not create the SCRAM-SHA-512 user $KAFKA_SCRAM_USER"

    local deadline=$((SECONDS + 60))
    until sasl_answers; do
        if ((SECONDS >= deadline)); then
            sed 's/^/  | /' "$KAFKA_SECURE_DIR/probe.err" >&2 || true
            die "no SASL_SSL answer on $SASL_BOOTSTRAP within 60 s (broker log: $KAFKA_DATA/kafka.log)"
        fi
        sleep 1
    done
    log "Kafka with SASL_SSL (SCRAM-SHA-512, user $KAFKA_SCRAM_USER) on $SASL_BOOTSTRAP, CA $CERTS/ca.pem, Java client settings $CLIENT_PROPS; ready after $((SECONDS - started)) s"
}

cmd_status() {
    "$KAFKA_SH" status || return 1
    [[ -f $CLIENT_PROPS ]] || die "no $CLIENT_PROPS: this broker was not started by kafka_secure.sh"
    if sasl_answers; then
        log "answering over SASL_SSL on $SASL_BOOTSTRAP"
        return 0
    fi
    log "not answering over SASL_SSL on $SASL_BOOTSTRAP (see $KAFKA_SECURE_DIR/probe.err)"
    return 1
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
}

main() {
    (($# >= 1)) || {
        usage
        exit 2
    }
    local cmd=$1
    shift
    case $cmd in
    start) cmd_start ;;
    stop) "$KAFKA_SH" stop ;;
    status) cmd_status ;;
    certs)
        claim_dir
        cmd_certs
        ;;
    run) "$KAFKA_SH" run "$@" ;;
    -h | --help | help) usage ;;
    *)
        usage
        die "unknown command '$cmd'"
        ;;
    esac
}

main "$@"
