-- New bodies are compressed with lz4 rather than pglz, where the server can (PostgreSQL 14 and
-- later, built with lz4, as the common packages are). With deliveries of 64 KiB at 1,000 a second,
-- pglz_compress took a fifth of Postgres' CPU (docs/benchmarks.md, waiters); lz4 compresses such
-- a body some twenty times faster. Only values written from now on are compressed so: the
-- catalogue changes, no row is rewritten. A server without lz4 keeps pglz, and says so.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE deliveries ALTER COLUMN body SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'lz4 is not available on this server: bodies stay compressed with pglz';
END
$$;
