from fashiontag.cli import app

app()
