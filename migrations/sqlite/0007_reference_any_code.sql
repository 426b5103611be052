-- A `subject` row without a code beside the per-code rows of a resource that has codes.
-- The per-code rows let patient + code (and `$lastn`) read one range of the lookup index; a
-- search without a code read all of them, every reading of the patient times its codes, and
-- checked `date_hi` on each, because `code` and `code_system` come before it in the index.
-- Now every search without a code range reads only rows whose code and code_system are null
-- (one per reference), and the range of "this patient's readings since X" is exact.
-- New writes add the row (search::index); this adds it for what is already indexed.
insert into search_reference
    (res_type, res_id, param, target_type, target_id, url, date_lo, date_hi, code_system, code,
     date_exact, categories, version_id)
select distinct res_type, res_id, param, target_type, target_id, url, date_lo, date_hi,
       null, null, date_exact, categories, version_id
from search_reference
where param = 'subject' and code is not null;
