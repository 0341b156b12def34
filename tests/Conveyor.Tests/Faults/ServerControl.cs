using System.Diagnostics;

namespace Conveyor.Tests.Faults;

/// <summary>
/// Stops and starts the servers the tests use. The commands come from the environment
/// (<c>bench/run.sh faults-disruptive</c> points them at private servers); the defaults act on the
/// machine's shared RabbitMQ and PostgreSQL 15 cluster.
/// </summary>
public static class ServerControl
{
    public static Task StopBrokerAsync() => RunAsync("CONVEYOR_FAULTS_RABBIT_STOP", "rabbitmqctl stop_app");

    public static Task StartBrokerAsync() => RunAsync("CONVEYOR_FAULTS_RABBIT_START", "rabbitmqctl start_app && rabbitmqctl await_startup");

    public static Task StopDatabaseAsync() => RunAsync("CONVEYOR_FAULTS_PG_STOP", "pg_ctlcluster 15 main stop");

    public static Task StartDatabaseAsync() => RunAsync("CONVEYOR_FAULTS_PG_START", "pg_ctlcluster 15 main start");

    private static async Task RunAsync(string variable, string fallback)
    {
        var command = Environment.GetEnvironmentVariable(variable) is { Length: > 0 } configured ? configured : fallback;
        var start = new ProcessStartInfo("/bin/sh") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(command);
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not run {command}");
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"'{command}' exited {process.ExitCode}: {await output}{await error}");
        }
    }
}
