drop table app.job_probes;
drop table import_files;
drop table import_rows;
drop table job_records;
drop table app.cron_ticks;
drop table app.job_outbox;
drop function app.job_outbox_notify();
