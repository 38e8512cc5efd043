"""The Streamlit search page (built on :class:`vitsearch.search.SearchClient`)."""
