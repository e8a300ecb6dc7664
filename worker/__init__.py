"""The arq worker that persists bookings and cancellations to PostgreSQL."""
