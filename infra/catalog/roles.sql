-- PostgreSQL roles of the mer catalog:
--   mer_analyst  read-only: SELECT on the catalog's tables and views (labels, latest_labels, runs, ...), nothing else.
--   mer_writer   the jobs: read, INSERT and UPDATE (the tagger's upserts) on the catalog's tables; no DELETE, no
--                TRUNCATE, no schema changes, and the schema version table is read-only to it.
-- Both are group roles (NOLOGIN). Give each person or service a LOGIN role of its own that is a member, e.g.
--   CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE mer_analyst;
--   CREATE ROLE mer_tagger LOGIN PASSWORD '...' IN ROLE mer_writer;   -- MER_CATALOG_URL of the jobs
--
-- Run it as the catalog tables' owner or a superuser (creating the roles needs CREATEROLE), connected to the
-- catalog database, AFTER the schema exists (`upgrade_catalog`, which the owner runs: jobs connecting as a
-- mer_writer member cannot create or alter tables):
--   psql "postgresql://admin@db-host/mer" -v ON_ERROR_STOP=1 -f infra/catalog/roles.sql
-- Idempotent: run it again after every catalog migration (new tables get their grants; a test fails if a table
-- of the catalog is missing from the lists below). Grants cover only mer's own tables in the current schema, so the
-- catalog can share a database with other applications.
-- Roles are cluster-wide in PostgreSQL: one pair serves every mer catalog database of the cluster.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mer_analyst') THEN
        BEGIN
            CREATE ROLE mer_analyst NOLOGIN;
        EXCEPTION WHEN duplicate_object THEN NULL;  -- created concurrently by another session
        END;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mer_writer') THEN
        BEGIN
            CREATE ROLE mer_writer NOLOGIN;
        EXCEPTION WHEN duplicate_object THEN NULL;
        END;
    END IF;
END
$$;

DO $$
DECLARE
    -- The catalog's relations (mer/catalog/migrations). Keep in step with the migrations.
    base_tables  text[] := ARRAY['items', 'runs', 'labels', 'failures'];
    views        text[] := ARRAY['latest_labels', 'open_failures', 'label_changes'];
    version_table text  := 'mer_alembic_version';
    schema_name  text   := current_schema();
    relation     text;
    sequence_name text;
BEGIN
    IF to_regclass(format('%I.%I', schema_name, 'labels')) IS NULL THEN
        RAISE EXCEPTION 'no mer catalog in schema % of database %: create it with upgrade_catalog first',
            schema_name, current_database();
    END IF;

    EXECUTE format('GRANT CONNECT ON DATABASE %I TO mer_analyst, mer_writer', current_database());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO mer_analyst, mer_writer', schema_name);
    -- Up to PostgreSQL 14 every role may create tables in schema public (PUBLIC holds CREATE there); analysts and
    -- jobs must not change the catalog's schema, so take that away (the default from PostgreSQL 15 on).
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', schema_name);

    -- Analysts read everything of the catalog, including the schema version.
    FOREACH relation IN ARRAY base_tables || views || ARRAY[version_table] LOOP
        EXECUTE format('GRANT SELECT ON %I.%I TO mer_analyst, mer_writer', schema_name, relation);
    END LOOP;

    -- The jobs upsert (INSERT ... ON CONFLICT DO UPDATE needs both) into the base tables, and draw run and
    -- failure ids from the tables' sequences.
    FOREACH relation IN ARRAY base_tables LOOP
        EXECUTE format('GRANT INSERT, UPDATE ON %I.%I TO mer_writer', schema_name, relation);
        FOR sequence_name IN
            SELECT seq.oid::regclass::text
            FROM pg_class AS seq
            JOIN pg_depend AS dep ON dep.objid = seq.oid AND dep.deptype IN ('a', 'i')
            WHERE seq.relkind = 'S' AND dep.refobjid = format('%I.%I', schema_name, relation)::regclass
        LOOP
            EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO mer_writer', sequence_name);
        END LOOP;
    END LOOP;
END
$$;
