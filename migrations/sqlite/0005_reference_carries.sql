-- What a search driven by the reference rows (patient + category + date, the US Core
-- vital-signs search) needs of each candidate, carried on the row so it costs no per-candidate
-- probe of another table. See migrations/postgres/0005_reference_carries.sql.
alter table search_reference add column categories text;
alter table search_reference add column version_id bigint;
