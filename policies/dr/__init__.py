"""Demand response, pure: event lifecycle and baselines (`events`), Flex-tier limits (`flex`),
one session object the daemon and the simulator both drive (`session`), and event reports
(`report`)."""
