"""SQL mode's schema and statements (ASP.NET's ``InstallSqlState.sql``, for PostgreSQL and SQLite)."""
