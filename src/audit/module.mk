LIB_SRCS += src/audit/event.c src/audit/redact.c src/audit/format.c src/audit/sink.c \
	src/audit/alerts.c src/audit/writer.c src/audit/api.c src/audit/ship.c \
	src/audit/refusal.c
UNIT_TESTS += audit_event audit_format audit_sink audit_alerts audit_queue
FUZZ_TARGETS += audit_event
