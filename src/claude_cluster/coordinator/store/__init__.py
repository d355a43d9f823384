"""The store: tables, engine and every query. Only this package imports SQLAlchemy."""
