"""Open and click tracking: the sealed links a tracked mail carries (``links``), their rewriting
into the rendered mail (``rewrite``), the in-process buffer the public routes append hits to
(``hits``), the rules that tell people from machines (``classify``) and the flush that records
hits and keeps each campaign's summary (``record``)."""
