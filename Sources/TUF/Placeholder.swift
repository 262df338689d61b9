// TUF
