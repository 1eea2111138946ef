"""The analysts' web dashboard over the sink's database: the HTTP server and review endpoint (server), its
queries (data) and the static page (static/)."""
