//! `podguard`: the operator CLI.

use clap::{CommandFactory, Parser};

mod cli;
mod lab;
mod man;
mod ops;
mod view;

use cli::{Api, Cli, Command, GraphFormat};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", podguard::errors::one_line(&e));
            std::process::ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let api = Api {
        kubeconfig: cli.kubeconfig,
        context: cli.context,
    };
    let target = |lab: bool| api.target(lab);
    match cli.command {
        Command::Showconf { node, plan, lab } => view::showconf(target(lab), &node, &plan.config()),
        Command::Graph { format, plan, lab } => {
            view::graph(target(lab), format == GraphFormat::Svg, &plan.config())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "podguard",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { page, dir } => man::man(page.as_deref(), dir.as_deref()),
        Command::Rotate {
            node,
            cancel: true,
            output,
            lab,
            ..
        } => ops::cancel_rotation(target(lab), node, output),
        Command::Rotate {
            node,
            all,
            wait,
            timeout,
            output,
            lab,
            agents,
            ..
        } => ops::rotate(
            target(lab),
            &agents.namespace,
            node,
            all,
            wait,
            timeout,
            output,
        ),
        Command::Audit {
            fail_on,
            pods,
            output,
            lab,
            probe,
            agents,
        } => ops::audit(target(lab), &agents.namespace, fail_on, pods, output, probe),
        Command::Status {
            output,
            lab,
            agents,
        } => ops::status(target(lab), &agents.namespace, output),
        Command::Lab(cmd) => lab::run(cmd),
    }
}
