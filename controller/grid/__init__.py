"""Grid demand-response edges: event sources (OpenADR VEN, MQTT, policy file) and the event store.

Every source turns what it hears into `policies.dr.events.DrEvent` values and hands them to one
`GridEvents` manager, which persists them (`EventStore`, SQLite) and computes the DR limit each
tick with the pure functions of `policies.dr.events` and `policies.dr.flex`.
"""
