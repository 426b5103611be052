-- Whether a reference row's date envelope [date_lo, date_hi] is the resource's one `date` value
-- (true) or the hull of several (false). When it is exact, a search that is driven by the
-- reference rows (patient + date, the US Core vital-signs search) decides its `date` criterion on
-- the row itself instead of probing search_date once per candidate, which was the largest cost
-- of that search. Null on rows written before this column existed: those are probed, as before,
-- until `vitalbridge reindex` rewrites them.
alter table search_reference add column date_exact boolean;
