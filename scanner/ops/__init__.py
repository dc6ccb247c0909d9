"""Operations on finished sweeps: diff two sweeps, count one, and write an HTML report."""
