"""The sample campaign: a simulated audience, embedded stand-in services and the
``campaign-worker demo`` command that runs it on a real worker and beat."""
