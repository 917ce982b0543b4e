// Scaffolding: the benchmark lands with issue #6.
System.Console.Error.WriteLine("benchmark: not built yet");
return 1;
