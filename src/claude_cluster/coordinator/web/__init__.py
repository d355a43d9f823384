"""What the dashboard's pages are made of, apart from the routes: who may act
(:mod:`.access`), CSRF tokens for its forms (:mod:`.csrf`), and the view helpers the
templates use (:mod:`.views`: relative times, safe links, readiness, the cost chart).
"""
