using System.Text.Json;
using Spectre.Console.Cli;

namespace Conveyor.Cli.Commands;

/// <summary>Connects to the Api and runs the command; errors travel as <see cref="CliFailureException"/>.</summary>
public abstract class ConveyorCommand<TSettings> : AsyncCommand<TSettings>
    where TSettings : ApiSettings
{
    public sealed override async Task<int> ExecuteAsync(CommandContext context, TSettings settings, CancellationToken cancellationToken)
    {
        var cli = (CliContext)context.Data!;
        // Arguments Spectre matched to nothing (after a "--") would be dropped silently, filters among them.
        if (context.Remaining.Raw.Count > 0 || context.Remaining.Parsed.Count > 0)
        {
            throw new CliFailureException(ExitCodes.Usage,
                $"Arguments that no option takes: {string.Join(' ', context.Remaining.Raw)}. Nothing was sent.");
        }

        using var client = cli.Client(settings.Api);
        return await RunAsync(cli, client, settings, cancellationToken);
    }

    protected abstract Task<int> RunAsync(CliContext cli, ConveyorClient client, TSettings settings, CancellationToken cancellationToken);

    protected static void WriteJson(CliContext cli, JsonElement json) => cli.RawOut.WriteLine(JsonSerializer.Serialize(json, ReadableJson.Indented));

    protected static string Escape(string value) => Uri.EscapeDataString(value);
}
