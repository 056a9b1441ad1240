"""Operations: lifecycle and handover, the doctor, bench setup, logs and dependency checks."""
