"""Storage: the SQL layer (database), the verdict sink (sink), reports (report) and a throw-away local
PostgreSQL for tests and benchmarks (localpg)."""
