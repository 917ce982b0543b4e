using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("FusePassthrough.Tests")]
