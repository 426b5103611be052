-- What a search driven by the reference rows (patient + category + date, the US Core
-- vital-signs search) needs of each candidate, carried on the row so it costs no per-candidate
-- probe of another table:
-- `categories`: the resource's `category` tokens, each written as U+001F system U+001E code
--   U+001F (system '' when it has none; see search::index::category_key), so a category
--   criterion is a substring test. Null where the resource has a token those separators could
--   not delimit, and on rows written before this column existed: those are probed, as before,
--   until `vitalbridge reindex` rewrites them.
-- `version_id`: the resource's current version (index rows exist only for it), so the page
--   reads `resource_history` directly rather than looking each match up in `resource` first.
--   Null on older rows, which look it up as before.
alter table search_reference add column categories text;
alter table search_reference add column version_id bigint;

-- SQLite's `instr`, for the substring test in one SQL text for both backends. A plain SQL
-- function: the planner inlines it (https://wiki.postgresql.org/wiki/Inlining_of_SQL_functions).
create function instr(haystack text, needle text) returns integer
    language sql immutable strict parallel safe
    as $$ select strpos(haystack, needle) $$;
