-- The statements of buttress's PostgreSQL store (buttress.stores._postgres), by name.
--
-- Each "-- name: x" line starts the statement named x, which runs to the next one. The
-- store replaces "@schema" by its schema (an identifier it has checked); every value is a
-- bound parameter (%s). The time of a statement is its first parameter: NULL lets the
-- server's clock decide (one clock for a fleet), a number is the caller's clock.
--
-- The rate-limit statements run the admission test of buttress._gcra on the server's
-- doubles, in the same order of operations, so that they agree with it bit for bit:
--     max(tat, now) + interval * cost  <=  now * SCALE + (tau + EPSILON)
-- with SCALE = 1.0000000000000018 (1 + 8 * 2^-52) and EPSILON = 1e-09 (float8 literals:
-- a bare decimal literal would be numeric). They only decide what to write; the caller
-- computes the decisions from the TATs they return.

-- name: ddl_schema
CREATE TABLE IF NOT EXISTS @schema.buttress_schema (
    version integer NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now())

-- name: ddl_rate
-- UNLOGGED: limits are hot, tiny rows rewritten on every decision. ``previous``: the TAT a
-- single-key decision found (RETURNING shows only new values).
CREATE UNLOGGED TABLE IF NOT EXISTS @schema.buttress_rate (
    key text COLLATE "C" PRIMARY KEY,
    tat double precision NOT NULL,
    previous double precision) WITH (fillfactor = 80)

-- name: ddl_idempotency
CREATE TABLE IF NOT EXISTS @schema.buttress_idempotency (
    key text COLLATE "C" PRIMARY KEY,
    fingerprint text NOT NULL,
    token text NOT NULL,
    expires_at double precision NOT NULL,
    response bytea)

-- name: ddl_breaker
CREATE UNLOGGED TABLE IF NOT EXISTS @schema.buttress_breaker (
    name text COLLATE "C" NOT NULL,
    instance text COLLATE "C" NOT NULL,
    state text NOT NULL,
    published_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    PRIMARY KEY (name, instance))

-- name: ddl_acquire
-- GCRA over N keys, all or nothing; returns its time and the TATs it read. It locks every
-- row in key order (creating missing ones) in one pass, so concurrent multi-key decisions
-- queue in one order and cannot deadlock, then writes all or nothing.
CREATE OR REPLACE FUNCTION @schema.buttress_acquire(
    p_keys text[], p_intervals float8[], p_bursts integer[], p_costs integer[],
    p_now float8, OUT o_now float8, OUT o_tats float8[])
LANGUAGE plpgsql AS $$
DECLARE
    v_n integer := cardinality(p_keys);
    v_news float8[] := '{}';
    v_ok boolean := true;
    v_tat float8;
BEGIN
    IF v_n = 1 THEN
        INSERT INTO @schema.buttress_rate AS r (key, tat)
        VALUES (p_keys[1], '-infinity'::float8)
        ON CONFLICT (key) DO UPDATE SET tat = r.tat WHERE false;
    ELSE
        INSERT INTO @schema.buttress_rate AS r (key, tat)
        SELECT DISTINCT u.k COLLATE "C", '-infinity'::float8
          FROM unnest(p_keys) AS u(k) ORDER BY 1
        ON CONFLICT (key) DO UPDATE SET tat = r.tat WHERE false;
    END IF;
    o_now := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
    o_tats := '{}';
    FOR i IN 1 .. v_n LOOP
        SELECT nullif(r.tat, '-infinity'::float8) INTO v_tat
          FROM @schema.buttress_rate AS r WHERE r.key = p_keys[i];
        o_tats[i] := v_tat;
        v_tat := greatest(v_tat, o_now) + p_intervals[i] * p_costs[i]::float8;
        v_news[i] := v_tat;
        IF v_tat > o_now * 1.0000000000000018::float8
                   + (p_intervals[i] * p_bursts[i]::float8 + 1e-09::float8) THEN
            v_ok := false;
        END IF;
    END LOOP;
    IF v_ok THEN  -- a repeated key: the last write wins
        FOR i IN 1 .. v_n LOOP
            UPDATE @schema.buttress_rate SET tat = v_news[i] WHERE key = p_keys[i];
        END LOOP;
    END IF;
END $$

-- name: ddl_begin
-- Take an idempotency key when absent or expired; else return the live record.
CREATE OR REPLACE FUNCTION @schema.buttress_begin(
    p_key text, p_fingerprint text, p_token text, p_lease float8, p_now float8,
    OUT o_now float8, OUT o_acquired boolean, OUT o_fingerprint text,
    OUT o_expires_at float8, OUT o_response bytea)
LANGUAGE plpgsql AS $$
BEGIN
    o_now := coalesce(p_now, extract(epoch FROM clock_timestamp())::float8);
    INSERT INTO @schema.buttress_idempotency AS r
           (key, fingerprint, token, expires_at, response)
    VALUES (p_key, p_fingerprint, p_token, o_now + p_lease, NULL)
    ON CONFLICT (key) DO UPDATE
       SET fingerprint = excluded.fingerprint, token = excluded.token,
           expires_at = excluded.expires_at, response = NULL
     WHERE r.expires_at <= o_now;
    o_acquired := FOUND;
    IF NOT o_acquired THEN  -- the statement above locked the live record
        SELECT r.fingerprint, r.expires_at,
               CASE WHEN r.fingerprint = p_fingerprint THEN r.response END
          INTO o_fingerprint, o_expires_at, o_response
          FROM @schema.buttress_idempotency AS r WHERE r.key = p_key;
    END IF;
END $$

-- name: acquire_one
-- One key (the hot path): one plain statement, no plpgsql call. Parameters: now, key,
-- then step (interval * cost) and tau + EPSILON where the CASEs use them. On a denial
-- the row is rewritten unchanged (a HOT update; it keeps ``previous`` right and costs what
-- locking the row would). Returns the time and the TAT found (NULL or -infinity: none).
WITH t AS (SELECT coalesce(%s::float8, extract(epoch FROM clock_timestamp())::float8) AS now)
INSERT INTO @schema.buttress_rate AS r (key, tat)
SELECT %s, CASE WHEN t.now + %s <= t.now * 1.0000000000000018::float8 + %s
                THEN t.now + %s ELSE '-infinity'::float8 END FROM t
ON CONFLICT (key) DO UPDATE SET previous = r.tat, tat = CASE
    WHEN greatest(r.tat, (SELECT now FROM t)) + %s
         <= (SELECT now FROM t) * 1.0000000000000018::float8 + %s
    THEN greatest(r.tat, (SELECT now FROM t)) + %s ELSE r.tat END
RETURNING (SELECT now FROM t), r.previous

-- name: acquire
-- Several keys: keys, intervals, bursts, costs, now.
SELECT o_now, o_tats FROM @schema.buttress_acquire(
    %s::text[], %s::float8[], %s::integer[], %s::integer[], %s::float8)

-- name: begin
-- key, fingerprint, token, lease, now.
SELECT * FROM @schema.buttress_begin(%s, %s, %s, %s::float8, %s::float8)

-- name: renew
-- now, lease, key, token: the holder (its token, not completed, the lease not run out).
WITH t AS (SELECT coalesce(%s::float8, extract(epoch FROM clock_timestamp())::float8) AS now)
UPDATE @schema.buttress_idempotency SET expires_at = t.now + %s FROM t
 WHERE key = %s AND token = %s AND response IS NULL AND expires_at > t.now
RETURNING 1

-- name: complete
-- now, response, ttl, key, token.
WITH t AS (SELECT coalesce(%s::float8, extract(epoch FROM clock_timestamp())::float8) AS now)
UPDATE @schema.buttress_idempotency SET response = %s, expires_at = t.now + %s FROM t
 WHERE key = %s AND token = %s AND response IS NULL AND expires_at > t.now
RETURNING 1

-- name: release
-- now, key, token.
WITH t AS (SELECT coalesce(%s::float8, extract(epoch FROM clock_timestamp())::float8) AS now)
DELETE FROM @schema.buttress_idempotency USING t
 WHERE key = %s AND token = %s AND response IS NULL AND expires_at > t.now

-- name: publish
-- now, name, instance, state, ttl.
WITH t AS (SELECT coalesce(%s::float8, extract(epoch FROM clock_timestamp())::float8) AS now)
INSERT INTO @schema.buttress_breaker AS b (name, instance, state, published_at, expires_at)
SELECT %s, %s, %s, t.now, t.now + %s FROM t
ON CONFLICT (name, instance) DO UPDATE SET state = excluded.state,
    published_at = excluded.published_at, expires_at = excluded.expires_at

-- name: reports
-- now, name.
WITH t AS (SELECT coalesce(%s::float8, extract(epoch FROM clock_timestamp())::float8) AS now)
SELECT b.instance, b.state, t.now - b.published_at
  FROM t, @schema.buttress_breaker AS b
 WHERE b.name = %s AND b.expires_at > t.now ORDER BY b.instance
