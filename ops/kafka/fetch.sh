#!/usr/bin/env bash
# Fetch Apache Kafka's runtime jars from Maven Central into a cache folder, once.
#
#   ops/kafka/fetch.sh [CACHE_DIR]      (default: $PEERING_KAFKA_CACHE or <repo>/.cache/kafka)
#
# Tries 4.1.x, then 4.0.x, then 3.9.x (newest patch first) and stops at the first that resolves.
# On success CACHE_DIR/current names the version and CACHE_DIR/<version>/libs holds the jars.
# A later run with a complete cache does nothing and needs no network.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${1:-${PEERING_KAFKA_CACHE:-$here/../../.cache/kafka}}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

if [ -f "$cache/current" ]; then
  version=$(cat "$cache/current")
  if [ -f "$cache/$version/libs/.complete" ]; then
    echo "kafka $version already in $cache/$version/libs"
    exit 0
  fi
fi

command -v mvn >/dev/null || { echo "fetch.sh: mvn not found on PATH (install Maven)" >&2; exit 1; }
command -v java >/dev/null || { echo "fetch.sh: java not found on PATH (install a JDK 17+)" >&2; exit 1; }

candidates=(4.1.2 4.1.1 4.1.0 4.0.2 4.0.1 4.0.0 3.9.2 3.9.1 3.9.0)
for version in "${candidates[@]}"; do
  case $version in
    3.*) profile=reload4j ;;
    *) profile=log4j2 ;;
  esac
  libs="$cache/$version/libs"
  rm -rf "$libs.partial"
  echo "fetching Apache Kafka $version from Maven Central ..."
  if mvn -q -B -f "$here/pom.xml" -P "$profile" -Dkafka.version="$version" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs.partial" \
      >"$cache/mvn-$version.log" 2>&1; then
    touch "$libs.partial/.complete"
    rm -rf "$libs"
    mv "$libs.partial" "$libs"
    echo "$version" >"$cache/current"
    echo "kafka $version fetched into $libs ($(du -sh "$libs" | cut -f1))"
    exit 0
  fi
  echo "kafka $version did not resolve (see $cache/mvn-$version.log), trying the next one" >&2
done
echo "fetch.sh: no Kafka version resolved from Maven Central; logs in $cache" >&2
exit 1
